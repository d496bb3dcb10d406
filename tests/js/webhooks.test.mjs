// Webhooks end to end (issue 20): a real HTTP receiver, every signature checked by the
// `standardwebhooks` package (an independent implementation of the scheme); embedded mode
// for the event types, debounce, retries, restarts and isolation; two Redis-mode instances
// for cluster-wide occupancy.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Webhook } from 'standardwebhooks';

import {
  admin,
  connect,
  createKey,
  createProject,
  listen,
  nextEvent,
  publish,
  remove,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startInstances } from './redis-harness.mjs';

const T = { timeout: 90_000 };
const VACATED_MS = 600;
const FAST = [
  '--webhook-vacated-delay-ms', String(VACATED_MS),
  '--webhook-retry-base-ms', '100',
  '--webhook-retry-max-ms', '400',
  '--webhook-timeout-ms', '1500',
];

/**
 * A webhook receiver on a free port. `behave(path, n)` answers the n-th request (from 1) to a
 * path: a status, or 'hang' (never answers). Every request is kept with its verification
 * against the path's secret (`setSecret`).
 */
async function startReceiver(behave = () => 200) {
  const requests = [];
  const counts = new Map();
  const secrets = new Map();
  const hanging = new Set();
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const n = (counts.get(req.url) ?? 0) + 1;
      counts.set(req.url, n);
      const secret = secrets.get(req.url);
      let verified = null;
      let payload = null;
      if (secret) {
        try {
          payload = new Webhook(secret).verify(body, req.headers);
          verified = true;
        } catch {
          verified = false;
        }
      }
      requests.push({ path: req.url, n, headers: req.headers, body, verified, payload, at: Date.now() });
      const answer = behave(req.url, n);
      if (answer === 'hang') {
        hanging.add(res);
        return;
      }
      res.writeHead(answer, answer === 503 ? { 'retry-after': '0' } : {});
      res.end('receiver words that must never be logged');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    url: (path) => `http://127.0.0.1:${port}${path}`,
    requests,
    setSecret: (path, secret) => secrets.set(path, secret),
    on: (path) => requests.filter((r) => r.path === path),
    openHanging: () => [...hanging].filter((r) => !r.writableEnded).length,
    async close() {
      for (const r of hanging) r.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

async function addWebhook(h, project, receiver, path, events) {
  const res = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks`, { url: receiver.url(path), events });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.match(res.body.secret, /^whsec_/);
  receiver.setSecret(path, res.body.secret);
  return res.body;
}

const types = (list) => list.map((r) => JSON.parse(r.body).type);

describe('webhooks, embedded mode', () => {
  let h;
  let rx;
  before(async () => {
    rx = await startReceiver((path, n) => {
      if (path === '/flaky') return n <= 3 ? 500 : 200;
      if (path === '/hang') return 'hang';
      if (path === '/down') return 503;
      return 200;
    });
    h = await startHerald({ extraArgs: FAST });
  });
  after(async () => {
    await h?.stop();
    await rx?.close();
  });

  it('sends every event type, signed so that standardwebhooks verifies it; a tampered body fails', T, async () => {
    const project = uid('wh');
    await createProject(h, project);
    const hook = await addWebhook(h, project, rx, '/all', [
      'channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event',
      'api_key_revoked', 'api_key_expiring',
    ]);
    assert.equal(hook.enabled, true);
    const { key } = await createKey(h, project, ['publish_event', 'sign_token']);
    // A key expiring within --webhook-key-expiring-secs (default a day).
    const soon = await createKey(h, project, ['publish_event'], new Date(Date.now() + 3600_000).toISOString());

    const a = await connect(h, project);
    const b = await connect(h, project);
    const sign = async (channelName, userId) => {
      const res = await request(h, 'POST', '/v1/publishers/sign', {
        headers: { authorization: `Bearer ${key}` },
        body: userId ? { channelName, userId, userInfo: { name: userId } } : { channelName },
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body.token;
    };
    await listen(a, 'presence-room', await sign('presence-room', 'ann'));
    await listen(b, 'presence-room', await sign('presence-room', 'bob'));
    const relayed = nextEvent(b, 'event');
    const ack = await a.timeout(5000).emitWithAck('event', { channelName: 'presence-room', payload: { hi: 1 } });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    await relayed;
    await remove(b, 'presence-room');
    // Deleting the key removes both sockets' presence channel: api_key_revoked with counts.
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/api-keys/${key.split('_')[1]}`)).status, 204);

    const want = ['channel_occupied', 'member_added', 'client_event', 'member_removed', 'api_key_revoked', 'channel_vacated', 'api_key_expiring'];
    await waitFor(() => want.every((t) => types(rx.on('/all')).includes(t)), 15_000, `all types at the receiver: ${types(rx.on('/all'))}`);
    for (const r of rx.on('/all')) {
      assert.equal(r.verified, true, `signature of ${r.body}`);
      assert.match(r.headers['webhook-id'], /^msg_[0-9a-f]{32}$/);
      assert.equal(r.payload.data.projectId, project);
      assert.ok(!Number.isNaN(Date.parse(r.payload.timestamp)));
    }
    const byType = (t) => rx.on('/all').map((r) => r.payload).filter((p) => p.type === t);
    assert.equal(byType('channel_occupied')[0].data.channelName, 'presence-room');
    assert.deepEqual(byType('member_added').map((p) => p.data.userId).sort(), ['ann', 'bob']);
    assert.deepEqual(byType('client_event')[0].data.payload, { hi: 1 });
    assert.equal(byType('client_event')[0].data.userId, 'ann');
    const revoked = byType('api_key_revoked')[0].data;
    assert.equal(revoked.reason, 'deleted');
    assert.equal(revoked.socketsRemoved, 1, JSON.stringify(revoked));
    assert.equal(revoked.channelsRemoved, 1, JSON.stringify(revoked));
    const expiring = byType('api_key_expiring')[0].data;
    assert.equal(expiring.apiKeyId, soon.id);
    assert.ok(Date.parse(expiring.expiresAt) > Date.now(), 'before the expiry');
    assert.equal(byType('api_key_expiring').length, 1, 'once per key');

    // An independent check fails a tampered body, a wrong secret, an old timestamp.
    const sample = rx.on('/all')[0];
    const wh = new Webhook(hook.secret);
    assert.throws(() => wh.verify(sample.body.replace(project, `${project}x`), sample.headers));
    assert.throws(() => new Webhook(`whsec_${Buffer.alloc(32, 7).toString('base64')}`).verify(sample.body, sample.headers));
    assert.throws(() => wh.verify(sample.body, { ...sample.headers, 'webhook-timestamp': String(Math.floor(Date.now() / 1000) - 3600) }));
    a.disconnect();
    b.disconnect();
  });

  it('debounces vacated: leave and rejoin within the delay sends nothing; staying empty sends one', T, async () => {
    const project = uid('wh');
    await createProject(h, project);
    await addWebhook(h, project, rx, '/debounce', ['channel_occupied', 'channel_vacated']);
    const s = await connect(h, project);
    await listen(s, 'news');
    await waitFor(() => rx.on('/debounce').length === 1, 10_000, 'occupied');
    await remove(s, 'news');
    await sleep(VACATED_MS / 3);
    await listen(s, 'news');
    await sleep(VACATED_MS * 2);
    assert.deepEqual(types(rx.on('/debounce')), ['channel_occupied'], 'a flap sends nothing');
    s.disconnect();
    await waitFor(() => rx.on('/debounce').length === 2, 10_000, 'vacated');
    await sleep(VACATED_MS * 2);
    assert.deepEqual(types(rx.on('/debounce')), ['channel_occupied', 'channel_vacated']);
  });

  it('retries a receiver that fails three times, with every attempt in the delivery log', T, async () => {
    const project = uid('wh');
    await createProject(h, project);
    const hook = await addWebhook(h, project, rx, '/flaky', ['channel_occupied']);
    const s = await connect(h, project);
    await listen(s, 'retry-me');
    await waitFor(() => rx.on('/flaky').length === 4, 20_000, 'four attempts');
    const ids = new Set(rx.on('/flaky').map((r) => r.headers['webhook-id']));
    assert.equal(ids.size, 1, 'one delivery id across its attempts');
    assert.ok(rx.on('/flaky').every((r) => r.verified));
    let log;
    await waitFor(async () => {
      log = (await admin(h, 'GET', `/v1/admin/projects/${project}/webhooks/${hook.id}/deliveries`)).body;
      return log[0]?.status === 'delivered';
    }, 10_000, 'delivered in the log');
    assert.equal(log.length, 1);
    assert.deepEqual(log[0].attempts.map((a) => a.statusCode), [500, 500, 500, 200]);
    assert.equal(log[0].id, [...ids][0]);
    s.disconnect();
  });

  it('a failed delivery is dead-lettered, listed, and sent again by hand', T, async () => {
    const project = uid('wh');
    await createProject(h, project);
    const hook = await addWebhook(h, project, rx, '/down', ['channel_occupied']);
    const patched = await admin(h, 'PATCH', `/v1/admin/projects/${project}/webhooks/${hook.id}`, { url: rx.url('/down') });
    assert.equal(patched.status, 200);
    const s = await connect(h, project);
    await listen(s, 'dead');
    let log;
    await waitFor(async () => {
      log = (await admin(h, 'GET', `/v1/admin/projects/${project}/webhooks/${hook.id}/deliveries`)).body;
      return log[0]?.status === 'failed';
    }, 30_000, 'failed after max attempts');
    assert.equal(log[0].attempts.length, 8);
    const before = rx.on('/down').length;
    const retried = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks/${hook.id}/deliveries/${log[0].id}/retry`);
    assert.equal(retried.status, 202, JSON.stringify(retried.body));
    await waitFor(() => rx.on('/down').length > before, 10_000, 'sent again');
    const missing = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks/${hook.id}/deliveries/msg_${'0'.repeat(32)}/retry`);
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'delivery_not_found');
    s.disconnect();
  });

  it('a hanging receiver delays neither socket delivery nor another project\'s webhooks', T, async () => {
    const slow = uid('wh');
    const fast = uid('wh');
    await createProject(h, slow);
    await createProject(h, fast);
    await addWebhook(h, slow, rx, '/hang', ['channel_occupied', 'channel_vacated']);
    await addWebhook(h, fast, rx, '/fast', ['channel_occupied']);
    const { key } = await createKey(h, slow, ['publish_event']);
    const s = await connect(h, slow);
    for (let i = 0; i < 5; i += 1) await listen(s, `c${i}`);
    await waitFor(() => rx.openHanging() >= 1, 10_000, 'a hanging attempt');
    // While the slow project's receiver holds its attempt, events reach the socket and the
    // other project's webhook arrives.
    const started = Date.now();
    const got = nextEvent(s, 'event');
    assert.equal((await publish(h, key, 'c0', { n: 1 })).status, 200);
    await got;
    const socketMs = Date.now() - started;
    const f = await connect(h, fast);
    await listen(f, 'elsewhere');
    await waitFor(() => rx.on('/fast').length === 1, 10_000, 'the other project\'s webhook');
    assert.ok(rx.openHanging() >= 1, 'it arrived while the slow receiver still hung');
    console.log(`# publish → socket with a hanging receiver: ${socketMs} ms`);
    s.disconnect();
    f.disconnect();
  });

  it('keeps accepted deliveries across a restart while the receiver is down', T, async () => {
    // Its own server, with retries seconds apart: the delivery is still pending at the stop.
    const SLOW = ['--webhook-retry-base-ms', '2000', '--webhook-retry-max-ms', '2000'];
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-wh-'));
    let own = await startHerald({ extraArgs: SLOW, dataDir });
    const rx2 = await startReceiver(() => 200);
    const port = new URL(rx2.url('/')).port;
    await rx2.close();
    let back;
    try {
      const project = uid('wh');
      await createProject(own, project);
      const hook = await admin(own, 'POST', `/v1/admin/projects/${project}/webhooks`, {
        url: `http://127.0.0.1:${port}/later`, events: ['channel_occupied'],
      });
      assert.equal(hook.status, 201);
      const s = await connect(own, project);
      await listen(s, 'persist');
      await waitFor(async () => {
        const log = (await admin(own, 'GET', `/v1/admin/projects/${project}/webhooks/${hook.body.id}/deliveries`)).body;
        return log[0]?.attempts.length >= 1;
      }, 10_000, 'a failed attempt');
      await own.stop();
      // The receiver comes up on the same port; Herald restarts on the same data dir.
      back = http.createServer((req, res) => {
        let body = '';
        req.on('data', (c) => { body += c; });
        req.on('end', () => {
          back.got.push({ headers: req.headers, body });
          res.end();
        });
      });
      back.got = [];
      await new Promise((r) => back.listen(Number(port), '127.0.0.1', r));
      own = await startHerald({ extraArgs: SLOW, dataDir });
      await waitFor(() => back.got.length >= 1, 30_000, 'delivered after the restart');
      const verified = new Webhook(hook.body.secret).verify(back.got[0].body, back.got[0].headers);
      assert.equal(verified.type, 'channel_occupied');
      assert.equal(verified.data.channelName, 'persist');
    } finally {
      await own.stop();
      rmSync(dataDir, { recursive: true, force: true });
      if (back) {
        back.closeAllConnections();
        await new Promise((r) => back.close(r));
      }
    }
  });

  it('answers bad input with its own codes and keeps projects apart', T, async () => {
    const project = uid('wh');
    const other = uid('wh');
    await createProject(h, project);
    await createProject(h, other);
    for (const [body, code] of [
      [{ url: 'ftp://x.example', events: ['channel_occupied'] }, 'invalid_webhook_url'],
      [{ url: 'http://user:pw@x.example/', events: ['channel_occupied'] }, 'invalid_webhook_url'],
      [{ url: 'http://x.example/', events: [] }, 'invalid_webhook_events'],
      [{ url: 'http://x.example/', events: ['nope'] }, 'invalid_webhook_events'],
      [{ url: 'http://x.example/', events: ['channel_occupied'], enabled: 'yes' }, 'invalid_body'],
    ]) {
      const res = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks`, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.code, code, JSON.stringify(res.body));
    }
    const hook = (await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks`, { url: 'http://x.example/', events: ['channel_occupied'] })).body;
    const listed = (await admin(h, 'GET', `/v1/admin/projects/${project}/webhooks`)).body;
    assert.deepEqual(listed.map((w) => w.id), [hook.id]);
    assert.equal(listed[0].secret, undefined, 'no secret in listings');
    const foreign = await admin(h, 'GET', `/v1/admin/projects/${other}/webhooks/${hook.id}`);
    assert.equal(foreign.status, 404);
    assert.equal(foreign.body.error.code, 'webhook_not_found');
    const rotated = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks/${hook.id}/rotate-secret`);
    assert.equal(rotated.status, 200);
    assert.notEqual(rotated.body.secret, hook.secret);
    assert.ok(Date.parse(rotated.body.previousSecretExpiresAt) > Date.now());
    for (let i = 1; i < 10; i += 1) {
      assert.equal((await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks`, { url: `http://x.example/${i}`, events: ['channel_occupied'] })).status, 201);
    }
    const full = await admin(h, 'POST', `/v1/admin/projects/${project}/webhooks`, { url: 'http://x.example/11', events: ['channel_occupied'] });
    assert.equal(full.status, 409);
    assert.equal(full.body.error.code, 'too_many_webhooks');
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/webhooks/${hook.id}`)).status, 204);
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/webhooks/${hook.id}`)).status, 404);
  });
});

describe('webhooks, Redis mode', () => {
  let cluster;
  let rx;
  before(async () => {
    rx = await startReceiver(() => 200);
    cluster = await startInstances(2, { extraArgs: [...FAST, '--instance-ttl-secs', '2'] });
  });
  after(async () => {
    await cluster?.stop();
    await rx?.close();
  });

  it('a channel with subscribers on another instance is not vacated; each transition is sent once', T, async () => {
    const [n1, n2] = cluster.nodes;
    const project = uid('wh');
    await createProject(n1, project);
    await addWebhook(n1, project, rx, '/cluster', ['channel_occupied', 'channel_vacated']);
    await sleep(1100); // the endpoint cache of the other instance
    const a = await connect(n1, project);
    const b = await connect(n2, project);
    await listen(a, 'shared');
    await listen(b, 'shared');
    await waitFor(() => rx.on('/cluster').length >= 1, 10_000, 'occupied');
    a.disconnect();
    await sleep(VACATED_MS * 3);
    assert.deepEqual(types(rx.on('/cluster')), ['channel_occupied'], 'still occupied on n2');
    b.disconnect();
    await waitFor(() => rx.on('/cluster').length >= 2, 10_000, 'vacated');
    await sleep(VACATED_MS * 2);
    assert.deepEqual(types(rx.on('/cluster')), ['channel_occupied', 'channel_vacated'], 'once each');
    assert.ok(rx.on('/cluster').every((r) => r.verified));
  });
});
