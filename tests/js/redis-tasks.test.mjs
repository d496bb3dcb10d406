// Redis mode, background tasks: every instance's supervised tasks (reconciler, expiry
// scheduler, job worker, probe, bus, notices…) are alive after start, and the reconciler alone
// removes the sockets of a key that lost `sign_token` by PATCH (no notice exists for a scope
// change) within `--reconcile-interval-secs`, on every instance.
//
// Two Herald instances on one real redis-server, started once for the whole file.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  listen,
  nextEvent,
  publish,
  request,
  signToken,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startRedis } from './redis-harness.mjs';

const T = { timeout: 60_000 };
const RECONCILE_SECS = 1;

// The long-lived tasks of a Redis-mode instance, as `/readyz` names them.
const REDIS_TASKS = [
  'reconciler',
  'expiry_scheduler',
  'revocation_worker',
  'revocation_notices',
  'redis_reconnect_kick',
  'redis_dispatch',
  'redis_resubscribe',
  'probe',
  'heartbeat',
  'bus_listener',
  'bus_sender',
  'bus_peers',
];

async function readyz(h) {
  return request(h, 'GET', '/readyz');
}

/** The `--metrics-bind` listener the instance printed on stdout. */
function metricsUrl(h) {
  const m = /herald metrics on (http:\/\/127\.0\.0\.1:\d+)\/metrics/.exec(h.logs());
  assert.ok(m, 'the instance printed its metrics address');
  return `${m[1]}/metrics`;
}

describe('redis mode: supervised background tasks', () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = await Promise.all(
      [0, 1].map(() =>
        startHerald({
          extraArgs: [
            '--redis-url',
            redis.url,
            '--reconcile-interval-secs',
            String(RECONCILE_SECS),
            '--metrics-bind',
            '127.0.0.1:0',
          ],
        }),
      ),
    );
    await Promise.all(
      nodes.map(async (n) => {
        const deadline = Date.now() + 15_000;
        while ((await readyz(n)).status !== 200) {
          if (Date.now() > deadline) throw new Error(`instance ${n.url} never became ready\n${n.logs()}`);
          await sleep(100);
        }
      }),
    );
  });

  after(async () => {
    await Promise.all((nodes ?? []).map((n) => n.stop().catch(() => n.kill())));
    await redis?.stop();
  });

  it('after start every background task is running (/readyz and /metrics) and nothing panicked', T, async () => {
    // A reconnect kick and a reconciler pass happen right after the first subscribe; give them
    // (and a few reconcile periods) the time to run before looking.
    await sleep(RECONCILE_SECS * 1000 + 1500);
    for (const n of nodes) {
      const res = await readyz(n);
      assert.equal(res.status, 200);
      assert.equal(res.body.status, 'ready');
      assert.ok(res.body.tasks, `/readyz lists the tasks: ${JSON.stringify(res.body)}`);
      for (const task of REDIS_TASKS) {
        assert.equal(res.body.tasks[task], 'running', `${task} on ${n.url}: ${JSON.stringify(res.body.tasks)}`);
      }
      assert.equal(res.body.tasks.namespace, 'done', 'the namespace registration finished');

      const text = await (await fetch(metricsUrl(n), { signal: AbortSignal.timeout(5000) })).text();
      for (const task of REDIS_TASKS) {
        assert.match(text, new RegExp(`^herald_task_alive\\{task="${task}"\\} 1$`, 'm'), `herald_task_alive for ${task}`);
      }
      assert.doesNotMatch(text, /^herald_task_restarts_total\{/m, 'no task was restarted');
      assert.doesNotMatch(n.logs(), /panicked/, `a panic in the log of ${n.url}`);
    }
  });

  it('a key that loses sign_token by PATCH loses its sockets on every instance within the reconcile interval', T, async () => {
    const project = uid('patch');
    await createProject(nodes[0], project);
    const publisher = (await createKey(nodes[0], project, ['publish_event'])).key;
    const doomed = await createKey(nodes[1], project, ['sign_token']);
    const other = await createKey(nodes[0], project, ['sign_token']);
    const channel = `private-${uid('p')}`;
    // On each instance: a victim holding the channel through `doomed`, a bystander holding the
    // same channel through `other`.
    const victims = [];
    const bystanders = [];
    const doomedToken = await signToken(nodes[0], doomed.key, channel);
    for (const n of nodes) {
      const v = await connect(n, project);
      assert.deepEqual(await listen(v, channel, doomedToken), { ok: true });
      victims.push(v);
      const b = await connect(n, project);
      assert.deepEqual(await listen(b, channel, await signToken(n, other.key, channel)), { ok: true });
      bystanders.push(b);
    }
    // Both victims receive the channel before the change.
    const before = victims.map((v) => nextEvent(v, 'event'));
    assert.equal((await publish(nodes[0], publisher, channel, { n: 'before' })).status, 200);
    for (const e of await Promise.all(before)) assert.deepEqual(e.payload, { n: 'before' });

    const system = [...victims, ...bystanders].map((s) => collectEvents(s, 'system_message'));
    const events = victims.map((v) => collectEvents(v, 'event'));
    // PATCH sends no revocation notice and enqueues no job: only the reconcilers can act.
    const patchedAt = Date.now();
    const patched = await admin(nodes[1], 'PATCH', `/v1/admin/projects/${project}/api-keys/${doomed.id}`, {
      scopes: ['publish_event'],
    });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.deepEqual(patched.body.scopes, ['publish_event']);

    const removed = (i) => system[i].filter((m) => m.code === 'RemovedFromChannel');
    // Bound: one reconcile period, plus slack for the pass itself and the message's way.
    const bound = RECONCILE_SECS * 1000 + 1500;
    await waitFor(() => removed(0).length > 0 && removed(1).length > 0, bound + 3000, 'RemovedFromChannel on both instances');
    const took = Date.now() - patchedAt;
    console.log(`# PATCH to RemovedFromChannel on both instances: ${took} ms (bound ${bound} ms)`);
    assert.ok(took <= bound, `sockets removed ${took} ms after the PATCH, bound ${bound} ms`);
    for (const i of [0, 1]) {
      assert.equal(removed(i).length, 1, `one RemovedFromChannel for the victim on instance ${i}`);
      assert.deepEqual(removed(i)[0].data.channels, [channel]);
      assert.match(removed(i)[0].message, /no longer valid/);
    }
    for (const i of [2, 3]) assert.equal(removed(i).length, 0, 'bystanders keep the channel');

    // The victims no longer receive the channel; the bystanders on both instances do.
    const got = bystanders.map((b) => nextEvent(b, 'event'));
    assert.equal((await publish(nodes[1], publisher, channel, { n: 'after' })).status, 200);
    for (const e of await Promise.all(got)) assert.deepEqual(e.payload, { n: 'after' });
    await sleep(300);
    for (const ev of events) assert.deepEqual(ev.filter((e) => e.channelName === channel), [], 'no event after removal');

    // The key's tokens no longer open the channel; another key's still do.
    assert.equal((await listen(victims[1], channel, doomedToken)).code, 'token_key_scope');
    assert.deepEqual(await listen(victims[1], channel, await signToken(nodes[0], other.key, channel)), { ok: true });
  });
});
