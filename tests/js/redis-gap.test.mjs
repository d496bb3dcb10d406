// Redis mode: an instance whose link to Redis was cut (its bus subscription down) catches its
// sockets up from history once the link is back, or tells them they missed events, and the
// publishes made meanwhile answer 200 (issue 17: "no event answered 200 silently missing",
// without answering 503 for a fault history repairs).
//
// Two instances share one redis-server; instance B reaches it through a TCP proxy the test
// cuts (every connection of B destroyed, new ones refused) and restores. A socket listens on
// B; events are published on A while B is cut off.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  listen,
  publish,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startLinkProxy, startRedis } from './redis-harness.mjs';

/** Long enough that A keeps expecting B on the bus for the whole test. */
const INSTANCE_TTL_SECS = 60;
const MISSED = 5;
const T = { timeout: 60_000 };

async function waitReady(h, timeoutMs = 20_000) {
  await waitFor(
    async () => (await request(h, 'GET', '/readyz').catch(() => ({ status: 0 }))).status === 200,
    timeoutMs,
    `instance ${h.url} ready`,
  );
}

describe('redis mode: an instance cut off from Redis catches up from history', () => {
  let redis;
  let proxy;
  let a;
  let b;

  before(async () => {
    redis = await startRedis();
    proxy = await startLinkProxy(redis.port);
    const flags = (url) => ['--redis-url', url, '--instance-ttl-secs', String(INSTANCE_TTL_SECS)];
    [a, b] = await Promise.all([
      startHerald({ extraArgs: flags(redis.url) }),
      startHerald({ extraArgs: flags(proxy.url) }),
    ]);
    await Promise.all([waitReady(a), waitReady(b)]);
    // A knows B on the bus before the tests start (a publish confirmed by both instances).
    const project = uid('warmup');
    await createProject(a, project);
    await admin(a, 'PATCH', `/v1/admin/projects/${project}`, { history: { size: 0 } });
    const key = (await createKey(a, project, ['publish_event'])).key;
    await waitFor(async () => (await publish(a, key, 'w', {})).status === 200, 10_000, 'a confirmed publish');
  });

  after(async () => {
    await Promise.all([a, b].filter(Boolean).map((n) => n.stop().catch(() => n.kill())));
    proxy?.close();
    await redis?.close();
  });

  /** A project, a publishing key and a socket on B listening on `channel`. */
  async function setup(history) {
    const project = uid('gap');
    await createProject(a, project);
    if (history) {
      const res = await admin(a, 'PATCH', `/v1/admin/projects/${project}`, { history });
      assert.equal(res.status, 200, JSON.stringify(res.body));
    }
    const key = (await createKey(a, project, ['publish_event'])).key;
    const channel = 'orders';
    const socket = await connect(b, project, { transports: ['websocket'] });
    const events = collectEvents(socket, 'event');
    const messages = collectEvents(socket, 'system_message');
    assert.equal((await listen(socket, channel)).ok, true);
    const notices = {
      get list() {
        return messages.filter((m) => m.data?.errorCode === 'missed_events');
      },
    };
    return { key, channel, socket, events, notices };
  }

  /** Publishes `n` events on A while B is cut off; returns the answers. */
  async function publishWhileCut(key, channel, n) {
    proxy.cut();
    // B's connections are gone: Redis no longer counts its subscription.
    await waitFor(async () => (await request(b, 'GET', '/readyz')).status !== 200, 10_000, 'B not ready');
    const answers = [];
    for (let i = 0; i < n; i++) answers.push(await publish(a, key, channel, { missed: i }));
    proxy.restore();
    await waitReady(b);
    return answers;
  }

  it('the events published while B was cut off reach B\'s socket once each, in order, and were answered 200', T, async () => {
    const { key, channel, socket, events, notices } = await setup();
    assert.equal((await publish(a, key, channel, { before: true })).status, 200);
    await waitFor(() => events.length === 1, 5_000, 'the first event on B');

    const answers = await publishWhileCut(key, channel, MISSED);
    assert.deepEqual(answers.map((r) => r.status), Array(MISSED).fill(200),
      `publishes during the cut answered 200 (history repairs the gap): ${JSON.stringify(answers.map((r) => r.body))}`);

    await waitFor(() => events.length >= 1 + MISSED, 10_000, `${1 + MISSED} events on B (got ${events.length})`);
    assert.equal((await publish(a, key, channel, { after: true })).status, 200);
    await waitFor(() => events.length >= 2 + MISSED, 5_000, 'the live event after the catch-up');
    await sleep(500); // duplicates would arrive now
    assert.deepEqual(events.map((e) => e.offset), Array.from({ length: 2 + MISSED }, (_, i) => i + 1),
      'offsets contiguous from 1, each once');
    assert.deepEqual(events.slice(1, 1 + MISSED).map((e) => e.payload.missed), [...Array(MISSED).keys()]);
    assert.equal(new Set(events.map((e) => e.epoch)).size, 1);
    assert.deepEqual(notices.list, [], 'nothing was missed: no notice');
    socket.close();
  });

  it('when history no longer holds them, B\'s socket is told it missed events, then gets the live ones', T, async () => {
    const { key, channel, socket, events, notices } = await setup({ size: 2 });
    assert.equal((await publish(a, key, channel, { before: true })).status, 200);
    await waitFor(() => events.length === 1, 5_000, 'the first event on B');

    await publishWhileCut(key, channel, MISSED);
    await waitFor(() => notices.list.length === 1, 10_000, 'the missed_events notice');
    assert.equal(notices.list[0].code, 'Error');
    assert.deepEqual(notices.list[0].data, { errorCode: 'missed_events', channelName: channel, reason: 'history_expired' });
    assert.equal(events.length, 1, 'no partial replay');

    assert.equal((await publish(a, key, channel, { after: true })).status, 200);
    await waitFor(() => events.length === 2, 5_000, 'the live event after the notice');
    assert.equal(events[1].offset, 2 + MISSED);
    socket.close();
  });

  it('a socket that had no event of the channel yet is caught up from where its listen stood', T, async () => {
    // Its listen answered the channel's position: B knows where the room stands before any
    // event reached it, so the catch-up replays from there instead of a missed_events notice.
    const { key, channel, socket, events, notices } = await setup();
    await publishWhileCut(key, channel, 2);
    await waitFor(() => events.length === 2, 10_000, 'the two events published while B was cut off');
    assert.equal((await publish(a, key, channel, { after: true })).status, 200);
    await waitFor(() => events.length === 3, 5_000, 'the live event after the catch-up');
    await sleep(500); // duplicates would arrive now
    assert.deepEqual(events.map((e) => e.offset), [1, 2, 3]);
    assert.deepEqual(notices.list, [], 'nothing was missed: no notice');
    socket.close();
  });
});
