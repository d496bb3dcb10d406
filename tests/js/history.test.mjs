// Per-channel history end to end (issue 17, server side): offsets and epochs on publish and on
// event frames, `listen` with `since` replaying exactly the missed events (also while
// publishes continue), retention (`history_expired`), a restarted embedded server
// (`epoch_changed`), the history endpoint and its scope, and Redis mode across instances.
// The real binary, the official socket.io-client.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  publish,
  published,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startInstances } from './redis-harness.mjs';

const T = { timeout: 30_000 };

/** A project (optionally with `history` settings) and a key with every scope. */
async function project(h, history) {
  const id = uid('hist');
  await createProject(h, id);
  if (history) {
    const res = await admin(h, 'PATCH', `/v1/admin/projects/${id}`, { history });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body.history, { size: 100, ttlSecs: 120, ...history });
  }
  const { key } = await createKey(h, id, ['publish_event', 'read_history']);
  return { id, key };
}

/** `listen` with `since`, resolving with the ack. */
function listenSince(socket, channelName, since) {
  return socket.timeout(5000).emitWithAck('listen', { channelName, since });
}

const offsets = (events) => events.map((e) => e.offset);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('history (embedded mode)', () => {
  let h;
  before(async () => {
    h = await startHerald();
  });
  after(async () => {
    await h?.stop();
  });

  it('publish answers offsets 1..N under one epoch; events carry them', T, async () => {
    const { id, key } = await project(h);
    const socket = await connect(h, id);
    const events = collectEvents(socket, 'event');
    const plain = await socket.timeout(5000).emitWithAck('listen', { channelName: 'orders' });
    assert.equal(plain.offset, 0, JSON.stringify(plain));
    const answers = [];
    for (let i = 1; i <= 5; i++) answers.push(await published(h, key, 'orders', { n: i }));
    assert.deepEqual(answers.map((a) => a.offset), range(1, 5));
    const epoch = answers[0].epoch;
    assert.equal(typeof epoch, 'string');
    assert.equal(epoch, plain.epoch, 'the first event keeps the epoch the plain listen answered');
    assert.ok(answers.every((a) => a.epoch === epoch && typeof a.id === 'string'));
    // Offsets are per channel.
    assert.equal((await published(h, key, 'other', 1)).offset, 1);
    await waitFor(() => events.length === 5, 5000, 'five events');
    assert.deepEqual([...events], answers.map((a, i) => ({ id: a.id, channelName: 'orders', payload: { n: i + 1 }, offset: i + 1, epoch })));
  });

  it('a plain listen answers the channel position; a client that saw no event recovers from it', T, async () => {
    const { id, key } = await project(h);
    const first = await connect(h, id);
    const seen = collectEvents(first, 'event');
    // A channel never published to: offset 0 under an epoch the next events keep.
    const empty = await first.timeout(5000).emitWithAck('listen', { channelName: 'fresh' });
    assert.deepEqual(Object.keys(empty).sort(), ['epoch', 'offset', 'ok']);
    assert.equal(empty.ok, true);
    assert.equal(empty.offset, 0);
    assert.equal(typeof empty.epoch, 'string');
    // Away before any event: the events published meanwhile are recovered from that position.
    first.disconnect();
    for (let i = 1; i <= 3; i++) assert.equal((await published(h, key, 'fresh', { n: i })).epoch, empty.epoch);
    const again = await connect(h, id);
    const got = collectEvents(again, 'event');
    const ack = await listenSince(again, 'fresh', { offset: empty.offset, epoch: empty.epoch });
    assert.deepEqual(ack, { ok: true, recovered: true, epoch: empty.epoch, offset: 3 });
    assert.deepEqual(offsets(got), [1, 2, 3]);
    assert.deepEqual([...seen], []);

    // A channel with events: its latest offset; the next event delivered live is the one after.
    const third = await connect(h, id);
    const live = collectEvents(third, 'event');
    assert.deepEqual(await third.timeout(5000).emitWithAck('listen', { channelName: 'fresh' }), {
      ok: true,
      epoch: empty.epoch,
      offset: 3,
    });
    await published(h, key, 'fresh', { n: 4 });
    await waitFor(() => live.length === 1, 5000, 'the live event');
    assert.deepEqual(offsets(live), [4]);
  });

  it('a plain listen racing publishes: every event after the answered offset arrives live, none before', T, async () => {
    const { id, key } = await project(h, { size: 1000 });
    await published(h, key, 'race', 0);
    const TOTAL = 200;
    let next = 2;
    const publishers = Array.from({ length: 4 }, async () => {
      while (next <= TOTAL) {
        next++;
        await published(h, key, 'race', 0);
      }
    });
    await waitFor(() => next > 30, 10_000, 'publishing under way');
    const socket = await connect(h, id);
    const got = collectEvents(socket, 'event');
    const ack = await socket.timeout(5000).emitWithAck('listen', { channelName: 'race' });
    assert.equal(typeof ack.offset, 'number', JSON.stringify(ack));
    await Promise.all(publishers);
    const top = (await published(h, key, 'race', 'last')).offset;
    await waitFor(() => got.length >= top - ack.offset, 10_000, `events up to ${top}`);
    assert.deepEqual(offsets(got), range(ack.offset + 1, top));
  });

  it('listen with since replays exactly the missed events, in order, then live ones', T, async () => {
    const { id, key } = await project(h);
    const first = await connect(h, id);
    const seen = collectEvents(first, 'event');
    await listenSince(first, 'feed', undefined);
    let epoch;
    for (let i = 1; i <= 3; i++) epoch = (await published(h, key, 'feed', { n: i })).epoch;
    await waitFor(() => seen.length === 3, 5000, 'three events');
    first.disconnect();
    // Away: three more.
    for (let i = 4; i <= 6; i++) await published(h, key, 'feed', { n: i });

    const again = await connect(h, id);
    const got = collectEvents(again, 'event');
    const ack = await listenSince(again, 'feed', { offset: 3, epoch });
    assert.deepEqual(ack, { ok: true, recovered: true, epoch, offset: 6 });
    // The replay arrived before the ack.
    assert.deepEqual(offsets(got), [4, 5, 6]);
    assert.deepEqual(got.map((e) => e.payload.n), [4, 5, 6]);
    await published(h, key, 'feed', { n: 7 });
    await waitFor(() => got.length === 4, 5000, 'the live event');
    assert.deepEqual(offsets(got), [4, 5, 6, 7]);

    // Nothing missed: recovered, nothing replayed.
    const third = await connect(h, id);
    const none = collectEvents(third, 'event');
    assert.deepEqual(await listenSince(third, 'feed', { offset: 7, epoch }), { ok: true, recovered: true, epoch, offset: 7 });
    assert.deepEqual([...none], []);
  });

  it('publishing continuously during the recovery: offsets contiguous, no duplicate, no gap', T, async () => {
    const { id, key } = await project(h, { size: 1000 });
    const { epoch } = await published(h, key, 'busy', 0);
    const TOTAL = 300;
    let next = 2;
    // Four publishers race the listen below.
    const publishers = Array.from({ length: 4 }, async () => {
      while (next <= TOTAL) {
        next++;
        await published(h, key, 'busy', 0);
      }
    });
    await waitFor(() => next > 50, 10_000, 'publishing under way');
    const socket = await connect(h, id);
    const got = collectEvents(socket, 'event');
    const ack = await listenSince(socket, 'busy', { offset: 1, epoch });
    assert.equal(ack.recovered, true, JSON.stringify(ack));
    await Promise.all(publishers);
    const top = (await published(h, key, 'busy', 'last')).offset;
    await waitFor(() => got.length >= top - 1, 10_000, `events up to ${top}`);
    assert.deepEqual(offsets(got), range(2, top));
  });

  it('events beyond size or older than ttlSecs are not replayed: history_expired', T, async () => {
    const { id, key } = await project(h, { size: 3 });
    let epoch;
    for (let i = 1; i <= 5; i++) epoch = (await published(h, key, 'small', i)).epoch;
    const s = await connect(h, id);
    const got = collectEvents(s, 'event');
    assert.deepEqual(await listenSince(s, 'small', { offset: 1, epoch }), {
      ok: true,
      recovered: false,
      reason: 'history_expired',
      epoch,
      offset: 5,
    });
    assert.deepEqual([...got], [], 'nothing replayed when some events are lost');
    // Offset 2 is the last one before the retained 3..5: recoverable.
    const s2 = await connect(h, id);
    const got2 = collectEvents(s2, 'event');
    assert.equal((await listenSince(s2, 'small', { offset: 2, epoch })).recovered, true);
    assert.deepEqual(offsets(got2), [3, 4, 5]);

    const short = await project(h, { ttlSecs: 1 });
    const p = await published(h, short.key, 'brief', 1);
    await sleep(2100);
    const s3 = await connect(h, short.id);
    const ack = await listenSince(s3, 'brief', { offset: 0, epoch: p.epoch });
    assert.deepEqual(ack, { ok: true, recovered: false, reason: 'history_expired', epoch: p.epoch, offset: 1 });
  });

  it('a project with history off answers no offsets and history_disabled', T, async () => {
    const { id, key } = await project(h, { size: 0 });
    const answer = await published(h, key, 'quiet', 1);
    assert.deepEqual(Object.keys(answer), ['id']);
    const s = await connect(h, id);
    // No position to answer.
    assert.deepEqual(await s.timeout(5000).emitWithAck('listen', { channelName: 'quiet' }), { ok: true });
    assert.deepEqual(await listenSince(s, 'quiet', { offset: 0, epoch: 'e' }), {
      ok: true,
      recovered: false,
      reason: 'history_disabled',
    });
  });

  it('a wrong epoch is epoch_changed; a malformed since is invalid_body', T, async () => {
    const { id, key } = await project(h);
    const { epoch } = await published(h, key, 'c', 1);
    const s = await connect(h, id);
    assert.deepEqual(await listenSince(s, 'c', { offset: 1, epoch: 'not-this-one' }), {
      ok: true,
      recovered: false,
      reason: 'epoch_changed',
      epoch,
      offset: 1,
    });
    const bad = await listenSince(s, 'c2', { offset: -1, epoch });
    assert.equal(bad.ok, false);
    assert.equal(bad.code, 'invalid_body');
  });

  it('PATCH project history validates its bounds', T, async () => {
    const id = uid('hist');
    await createProject(h, id);
    for (const history of [{ size: 10001 }, { ttlSecs: 0 }, { ttlSecs: 86401 }, { size: -1 }, { size: null }, 'x']) {
      const res = await admin(h, 'PATCH', `/v1/admin/projects/${id}`, { history });
      assert.equal(res.status, 400, JSON.stringify(history));
      assert.equal(res.body.error.code, 'invalid_body');
    }
    const missing = await admin(h, 'PATCH', `/v1/admin/projects/${uid('none')}`, { history: { size: 1 } });
    assert.equal(missing.status, 404);
    const got = await admin(h, 'GET', `/v1/admin/projects/${id}`);
    assert.deepEqual(got.body.history, { size: 100, ttlSecs: 120 }, 'defaults');
  });

  it('the history endpoint pages newest-last and needs read_history', T, async () => {
    const { id, key } = await project(h);
    const ids = [];
    for (let i = 1; i <= 5; i++) ids.push((await published(h, key, 'log', { i })).id);
    const page = async (query) => {
      const res = await request(h, 'GET', `/v1/publishers/channels/log/history${query}`, {
        headers: { authorization: `Bearer ${key}` },
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body;
    };
    const p1 = await page('?limit=2');
    assert.equal(p1.channelName, 'log');
    assert.equal(p1.offset, 5);
    assert.deepEqual(p1.events, [
      { id: ids[0], offset: 1, payload: { i: 1 } },
      { id: ids[1], offset: 2, payload: { i: 2 } },
    ]);
    assert.equal(p1.next, 2);
    const p2 = await page(`?since=${p1.next}&limit=2`);
    assert.deepEqual(offsets(p2.events), [3, 4]);
    assert.equal(p2.epoch, p1.epoch);
    const p3 = await page(`?since=${p2.next}&limit=2`);
    assert.deepEqual(offsets(p3.events), [5]);
    assert.equal(p3.next, undefined);
    assert.deepEqual(offsets((await page('')).events), [1, 2, 3, 4, 5]);

    for (const q of ['?limit=0', '?limit=101', '?since=-1', '?since=x']) {
      const res = await request(h, 'GET', `/v1/publishers/channels/log/history${q}`, {
        headers: { authorization: `Bearer ${key}` },
      });
      assert.equal(res.status, 400, q);
      assert.equal(res.body.error.code, 'invalid_body');
    }
    const { key: publishOnly } = await createKey(h, id, ['publish_event']);
    const refused = await request(h, 'GET', '/v1/publishers/channels/log/history', {
      headers: { authorization: `Bearer ${publishOnly}` },
    });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'missing_scope');
    // A key created without scopes gets every one, read_history included.
    const created = await admin(h, 'POST', `/v1/admin/projects/${id}/api-keys`, { name: 'default' });
    assert.equal(created.status, 201);
    assert.deepEqual(created.body.scopes, ['publish_event', 'sign_token', 'read_history', 'read_presence']);
  });
});

describe('history across an embedded restart', () => {
  it('a restarted embedded server answers epoch_changed, never old offsets', T, async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-history-'));
    try {
      const h1 = await startHerald({ dataDir });
      const { id, key } = await project(h1);
      const before = await published(h1, key, 'c', 1);
      await h1.stop();
      const h2 = await startHerald({ dataDir });
      try {
        const s = await connect(h2, id);
        const ack = await listenSince(s, 'c', { offset: before.offset, epoch: before.epoch });
        assert.equal(ack.recovered, false);
        assert.equal(ack.reason, 'epoch_changed');
        const after = await published(h2, key, 'c', 2);
        assert.equal(after.offset, 1);
        assert.notEqual(after.epoch, before.epoch);
      } finally {
        await h2.stop();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('history: a recovery longer than the socket buffer (direct WebSocket transport)', () => {
  // Eight frames of queue per socket, a replay of sixty: the replay was asked for and is bounded
  // by the channel's history, so it must not count as the socket falling behind (else every
  // recovering socket is closed as a slow consumer, and its next recovery again). The direct
  // transport's, whatever HERALD_TEST_TRANSPORTS says: on socketioxide's transports each
  // replayed event takes a place of the buffer (docs/PROTOCOL.md, History and recovery).
  let h;
  before(async () => {
    h = await startHerald({ extraArgs: ['--socket-buffer', '8'] });
  });
  after(async () => {
    await h?.stop();
  });

  it('replays every missed event and keeps the socket', T, async () => {
    const { id, key } = await project(h);
    const first = await connect(h, id, { transports: ['websocket'] });
    const seen = collectEvents(first, 'event');
    await listenSince(first, 'feed', undefined);
    const { epoch } = await published(h, key, 'feed', { n: 1 });
    await waitFor(() => seen.length === 1, 5000, 'the first event');
    first.disconnect();
    const filler = 'x'.repeat(2048);
    for (let i = 2; i <= 61; i++) await published(h, key, 'feed', { n: i, filler });

    const again = await connect(h, id, { transports: ['websocket'] });
    const got = collectEvents(again, 'event');
    const system = collectEvents(again, 'system_message');
    const ack = await listenSince(again, 'feed', { offset: 1, epoch });
    assert.deepEqual(ack, { ok: true, recovered: true, epoch, offset: 61 });
    await waitFor(() => got.length === 60, 5000, 'the sixty missed events');
    assert.deepEqual(offsets(got), range(2, 61));
    await published(h, key, 'feed', { n: 62 });
    await waitFor(() => got.length === 61, 5000, 'the live event after the replay');
    assert.deepEqual(offsets(got), range(2, 62));
    assert.equal(again.connected, true);
    assert.deepEqual(system.filter((m) => m.code !== 'Success'), []);
  });
});

describe('history (redis mode, three instances)', () => {
  let cluster;
  let nodes;
  before(async () => {
    cluster = await startInstances(3);
    ({ nodes } = cluster);
  });
  after(async () => cluster?.stop());

  it('offsets are shared, and listen with since on another instance recovers', T, async () => {
    const { id, key } = await project(nodes[0]);
    const first = await connect(nodes[1], id);
    const seen = collectEvents(first, 'event');
    await first.timeout(5000).emitWithAck('listen', { channelName: 'r' });
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await published(nodes[i], key, 'r', { i }));
    assert.deepEqual(answers.map((a) => a.offset), [1, 2, 3], 'one counter for every instance');
    const { epoch } = answers[0];
    await waitFor(() => seen.length === 3, 5000, 'three events');
    first.disconnect();
    for (let i = 0; i < 3; i++) await published(nodes[i], key, 'r', { i: i + 3 });

    const again = await connect(nodes[2], id);
    const got = collectEvents(again, 'event');
    const ack = await listenSince(again, 'r', { offset: seen.at(-1).offset, epoch });
    assert.deepEqual(ack, { ok: true, recovered: true, epoch, offset: 6 });
    assert.deepEqual(offsets(got), [4, 5, 6]);
    await published(nodes[0], key, 'r', 'live');
    await waitFor(() => got.length === 4, 5000, 'the live event');
    assert.deepEqual(offsets(got), [4, 5, 6, 7]);
  });

  it('a recovery on one instance while another publishes: contiguous, no duplicate', T, async () => {
    const { id, key } = await project(nodes[0], { size: 1000 });
    const { epoch } = await published(nodes[0], key, 'busy', 0);
    const TOTAL = 300;
    let next = 2;
    const publishers = Array.from({ length: 4 }, async () => {
      while (next <= TOTAL) {
        next++;
        await published(nodes[0], key, 'busy', 0);
      }
    });
    await waitFor(() => next > 50, 10_000, 'publishing under way');
    const socket = await connect(nodes[2], id);
    const got = collectEvents(socket, 'event');
    const ack = await listenSince(socket, 'busy', { offset: 1, epoch });
    assert.equal(ack.recovered, true, JSON.stringify(ack));
    await Promise.all(publishers);
    const top = (await published(nodes[0], key, 'busy', 'last')).offset;
    await waitFor(() => got.length >= top - 1, 10_000, `events up to ${top}`);
    await sleep(200); // room for a late duplicate to show up
    assert.deepEqual(offsets(got), range(2, top));
  });
});
