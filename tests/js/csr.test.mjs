// Socket.IO connection state recovery for the official socket.io-client (issue 17, acceptance
// points 1 and 2): with no client code, a client whose engine was closed reconnects by itself
// and `socket.recovered === true`, with exactly the events it missed on every channel, in
// order, once each; a reconnect that cannot be recovered (forged pid, used pid, past the
// window, a revoked key) is a fresh session (`recovered === false`, no channels). Embedded
// mode, and Redis mode with three instances where the reconnect lands on another one.
//
// socket.io-client reconnects through a small TCP proxy of the test's: it holds new Engine.IO
// sessions while events are published (so "while away" does not race the client's
// reconnection timer) and chooses the instance they reach.
//
// Both transports: Herald's direct WebSocket (`transports: ["websocket"]`), and socketioxide's:
// the client's default (HTTP long-polling, then the upgrade to WebSocket) and polling only.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';

import { io } from 'socket.io-client';

import {
  admin,
  createKey,
  createProject,
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
/** The recovery window of the servers here: short enough to wait past in one test. */
const WINDOW_SECS = 4;

/**
 * A TCP proxy to one of several Herald instances. `hold()` parks new connections that open an
 * Engine.IO session (a request without `sid`: a handshake) until `release(target)`, which sends
 * them (and later ones) to `target`'s port. The requests of sessions already open (a polling
 * client's close, its last polls) go through: the server sees the old session end.
 */
async function startSwitch(target) {
  let port = new URL(target.url).port;
  let held = null;
  const sockets = new Set();
  const pairs = new Set();
  const pipe = (client) => {
    const upstream = net.connect(Number(port), '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    client.on('close', () => pairs.delete(pair));
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  };
  const server = net.createServer((client) => {
    client.on('error', () => {});
    if (!held) {
      pipe(client);
      return;
    }
    // Node's socket.io-client opens a connection per polling request: the first line says
    // whether it belongs to an open session.
    client.once('data', (first) => {
      client.pause();
      client.unshift(first);
      const requestLine = first.toString('latin1').split('\r\n', 1)[0];
      if (held && !/[?&]sid=/.test(requestLine)) held.push(client);
      else pipe(client);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    hold() {
      held = [];
    },
    /**
     * From now on what the servers send on the open connections is dropped (the client gets
     * nothing more), until `cut()` closes them.
     */
    blackhole() {
      for (const { client, upstream } of pairs) {
        upstream.unpipe(client);
        upstream.on('data', () => {});
      }
    },
    cut() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
    },
    release(next = target) {
      port = new URL(next.url).port;
      const waiting = held ?? [];
      held = null;
      for (const c of waiting) pipe(c);
    },
    close() {
      for (const s of sockets) s.destroy();
      for (const c of held ?? []) c.destroy();
      server.close();
    },
  };
}

/** A project and a key with every scope. */
async function project(h) {
  const id = uid('csr');
  await createProject(h, id);
  const { key, id: keyId } = await createKey(h, id, ['publish_event', 'sign_token', 'read_history']);
  return { id, key, keyId };
}

async function published(h, key, channel, payload) {
  const res = await publish(h, key, channel, payload);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

/** The transports the tests run with: Herald's direct WebSocket, socketioxide's. */
const DIRECT = ['websocket'];
const POLLING = ['polling'];
/** socket.io-client's default: polling, then the upgrade to WebSocket (socketioxide's). */
const DEFAULT = null;
const TRANSPORTS = [
  ['direct WebSocket', DIRECT],
  ['default: polling then upgrade', DEFAULT],
  ['polling only', POLLING],
];

/** With the default transports, resolves once the engine upgraded to WebSocket. */
async function upgraded(socket, transports) {
  if (transports === DEFAULT) {
    await waitFor(() => socket.io.engine?.transport?.name === 'websocket', 5000, 'the upgrade');
  }
}

/**
 * A socket.io-client socket through `sw`, reconnecting on its own; `got[channel]` collects the
 * events it receives per channel (offsets and payloads).
 */
async function client(sw, projectId, transports = DIRECT) {
  const socket = io(sw.url, {
    ...(transports ? { transports } : {}),
    forceNew: true,
    auth: { projectId },
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
  });
  const got = {};
  socket.on('event', (e) => {
    (got[e.channelName] ??= []).push(e.payload.n);
  });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  await upgraded(socket, transports);
  socket.transportsUsed = transports;
  return { socket, got };
}

/** `listen`'s ack without the channel position a successful one carries (`{ok, epoch, offset}`). */
const listen = async (socket, channelName, authToken) => {
  const ack = await socket.timeout(5000).emitWithAck('listen', authToken ? { channelName, authToken } : { channelName });
  if (ack?.ok !== true) return ack;
  const { epoch, offset, ...rest } = ack;
  return rest;
};

/** The servers' flags: a short recovery window, and metrics (to see a session saved). */
const SERVER_ARGS = ['--recovery-window-secs', String(WINDOW_SECS), '--metrics-bind', '127.0.0.1:0'];

/** How many sessions `h` saved at disconnect so far (`herald_csr_sessions_saved_total`). */
async function sessionsSaved(h) {
  const m = /herald metrics on (http:\/\/\S+)/.exec(h.logs());
  assert.ok(m, 'the instance printed its metrics address');
  const text = await (await fetch(m[1])).text();
  const line = text.split('\n').find((l) => l.startsWith('herald_csr_sessions_saved_total'));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/**
 * Closes the engine (the client reconnects by itself) and resolves once it noticed and
 * `server`, the instance it was on, saved its session (a polling client's close reaches the
 * server a moment later than a WebSocket's). With the default transports, the upgraded
 * WebSocket is what closes.
 */
async function dropEngine(sw, socket, server) {
  await upgraded(socket, socket.transportsUsed);
  if (socket.transportsUsed === POLLING) assert.equal(socket.io.engine.transport.name, 'polling');
  const saved = await sessionsSaved(server);
  sw.hold();
  const gone = new Promise((resolve) => socket.once('disconnect', resolve));
  socket.io.engine.close();
  await gone;
  await waitFor(async () => (await sessionsSaved(server)) > saved, 5000, 'the session saved');
}

/** Lets the held reconnect through (to `target`) and resolves with `socket.recovered`. */
async function reconnect(sw, socket, target) {
  const back = new Promise((resolve) => socket.once('connect', resolve));
  sw.release(target);
  await back;
  return socket.recovered;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * The scenario of acceptance point 1: three channels (one with no history yet), events before,
 * events on all three while away, the automatic reconnect through `sw` to `second`; then one
 * more event per channel, so every channel's list is complete when it arrived.
 */
async function recoverScenario(first, second, sw, transports = DIRECT) {
  const { id, key } = await project(first);
  const { socket, got } = await client(sw, id, transports);
  for (const c of ['a', 'b', 'c']) assert.deepEqual(await listen(socket, c), { ok: true });
  for (const n of [1, 2]) await published(first, key, 'a', { n });
  await published(first, key, 'b', { n: 1 });
  await waitFor(() => got.a?.length === 2 && got.b?.length === 1, 5000, 'the first events');

  await dropEngine(sw, socket, first);
  for (const n of [3, 4, 5]) await published(first, key, 'a', { n });
  for (const n of [2, 3]) await published(second, key, 'b', { n });
  for (const n of [1, 2]) await published(first, key, 'c', { n });

  assert.equal(await reconnect(sw, socket, second), true, 'socket.recovered');
  await published(second, key, 'a', { n: 6 });
  await published(first, key, 'b', { n: 4 });
  await published(second, key, 'c', { n: 3 });
  await waitFor(() => got.a?.at(-1) === 6 && got.b?.at(-1) === 4 && got.c?.at(-1) === 3, 5000, 'the live events');
  assert.deepEqual(got, { a: range(1, 6), b: range(1, 4), c: range(1, 3) });
  socket.disconnect();
}

describe('connection state recovery (embedded mode)', () => {
  let h;
  let sw;
  before(async () => {
    h = await startHerald({ extraArgs: SERVER_ARGS });
    sw = await startSwitch(h);
  });
  // A test that failed while away leaves the proxy holding: the next one starts afresh.
  beforeEach(() => sw.release(h));
  after(async () => {
    sw?.close();
    await h?.stop();
  });

  for (const [name, transports] of TRANSPORTS) {
    it(`socket.io-client recovers by itself: the missed events of every channel, in order, once each (${name})`, T, async () => {
      await recoverScenario(h, h, sw, transports);
    });
  }

  it('events the server sent but the client never got (lost in flight) are replayed', T, async () => {
    const { id, key } = await project(h);
    const { socket, got } = await client(sw, id);
    for (const c of ['a', 'b']) await listen(socket, c);
    await published(h, key, 'a', { n: 1 });
    await published(h, key, 'b', { n: 1 });
    await published(h, key, 'a', { n: 2 });
    await waitFor(() => got.a?.length === 2 && got.b?.length === 1, 5000, 'the first events');
    // The connection goes dark: these reach the server's socket, never the client.
    sw.hold();
    sw.blackhole();
    await published(h, key, 'b', { n: 2 });
    await published(h, key, 'a', { n: 3 });
    await published(h, key, 'b', { n: 3 });
    const gone = new Promise((resolve) => socket.once('disconnect', resolve));
    sw.cut();
    await gone;
    await published(h, key, 'a', { n: 4 });
    assert.equal(await reconnect(sw, socket), true);
    await published(h, key, 'a', { n: 5 });
    await published(h, key, 'b', { n: 4 });
    await waitFor(() => got.a?.at(-1) === 5 && got.b?.at(-1) === 4, 5000, 'the live events');
    assert.deepEqual(got, { a: range(1, 5), b: range(1, 4) });
    socket.disconnect();
  });

  for (const [name, transports] of TRANSPORTS) {
    it(`the CONNECT reply carries a pid; a second reconnect recovers again (${name})`, T, async () => {
      await pidScenario(h, sw, transports);
    });
  }

  it('a forged pid over polling is a fresh session too', T, async () => {
    const { id, key } = await project(h);
    const { socket, got } = await client(sw, id, POLLING);
    await listen(socket, 'feed');
    await dropEngine(sw, socket, h);
    await published(h, key, 'feed', { n: 1 });
    socket._pid = '0123456789abcdef0123456789abcdef';
    assert.equal(await reconnect(sw, socket), false);
    assert.match(socket._pid, /^[0-9a-f]{32}$/);
    assert.notEqual(socket._pid, '0123456789abcdef0123456789abcdef');
    await published(h, key, 'feed', { n: 2 });
    await listen(socket, 'other');
    await published(h, key, 'other', { n: 1 });
    await waitFor(() => got.other?.length === 1, 5000, 'the other channel');
    assert.equal(got.feed, undefined);
    socket.disconnect();
  });

  async function pidScenario(h, sw, transports) {
    const { id, key } = await project(h);
    const { socket, got } = await client(sw, id, transports);
    assert.equal(typeof socket._pid, 'string');
    await listen(socket, 'feed');
    await published(h, key, 'feed', { n: 1 });
    await waitFor(() => got.feed?.length === 1, 5000, 'event 1');
    for (const round of [0, 1]) {
      await dropEngine(sw, socket, h);
      await published(h, key, 'feed', { n: 2 + round });
      assert.equal(await reconnect(sw, socket), true, `round ${round}`);
      await waitFor(() => got.feed.length === 2 + round, 5000, 'the replay');
    }
    // Away again with nothing missed: recovered, nothing replayed.
    await dropEngine(sw, socket, h);
    assert.equal(await reconnect(sw, socket), true);
    await published(h, key, 'feed', { n: 4 });
    await waitFor(() => got.feed.length === 4, 5000, 'event 4');
    assert.deepEqual(got.feed, range(1, 4));
    socket.disconnect();
  }

  it('a forged or already used pid is a fresh session: recovered false, no channels', T, async () => {
    const { id, key } = await project(h);
    const { socket, got } = await client(sw, id);
    await listen(socket, 'feed');
    await dropEngine(sw, socket, h);
    await published(h, key, 'feed', { n: 1 });
    socket._pid = '0123456789abcdef0123456789abcdef';
    assert.equal(await reconnect(sw, socket), false);
    // No channel: nothing arrives until the application listens again.
    await published(h, key, 'feed', { n: 2 });
    await listen(socket, 'other');
    await published(h, key, 'other', { n: 1 });
    await waitFor(() => got.other?.length === 1, 5000, 'the other channel');
    assert.equal(got.feed, undefined);

    // One resume per record: a copy presenting the same pid and offset while the first
    // client holds the recovered session gets a fresh one.
    await listen(socket, 'feed');
    await published(h, key, 'feed', { n: 3 });
    await waitFor(() => got.feed?.length === 1, 5000, 'event 3');
    await dropEngine(sw, socket, h);
    const [pid, offset] = [socket._pid, socket._lastOffset];
    assert.equal(await reconnect(sw, socket), true);
    const copy = io(sw.url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { projectId: id } });
    copy._pid = pid;
    copy._lastOffset = offset;
    await new Promise((resolve, reject) => {
      copy.once('connect', resolve);
      copy.once('connect_error', reject);
    });
    assert.equal(copy.recovered, false);
    assert.notEqual(copy._pid, pid);
    copy.disconnect();
    socket.disconnect();
  });

  it('past the recovery window the reconnect is a fresh session', T, async () => {
    const { id, key } = await project(h);
    const { socket } = await client(sw, id);
    await listen(socket, 'feed');
    await dropEngine(sw, socket, h);
    await published(h, key, 'feed', { n: 1 });
    await sleep((WINDOW_SECS + 1.5) * 1000);
    assert.equal(await reconnect(sw, socket), false);
    socket.disconnect();
  });

  for (const [name, transports] of TRANSPORTS) {
    it(`a revoked key's private channels are not restored (${name})`, T, async () => {
      await revokedScenario(transports);
    });
  }

  async function revokedScenario(transports) {
    const { id, key } = await project(h);
    const signer = await createKey(h, id, ['sign_token']);
    const { socket, got } = await client(sw, id, transports);
    assert.deepEqual(await listen(socket, 'private-room', await signToken(h, signer.key, 'private-room')), { ok: true });
    await listen(socket, 'public');
    await dropEngine(sw, socket, h);
    await published(h, key, 'private-room', { n: 1 });
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${id}/api-keys/${signer.id}`)).status, 204);
    assert.equal(await reconnect(sw, socket), false);
    await published(h, key, 'private-room', { n: 2 });
    await listen(socket, 'public');
    await published(h, key, 'public', { n: 1 });
    await waitFor(() => got.public?.length === 1, 5000, 'the public event');
    assert.equal(got['private-room'], undefined);
    socket.disconnect();
  }
});

describe('connection state recovery (redis mode, three instances)', () => {
  let redis;
  let nodes;
  let sw;
  before(async () => {
    redis = await startRedis();
    nodes = await Promise.all(
      [0, 1, 2].map(() =>
        startHerald({ extraArgs: ['--redis-url', redis.url, ...SERVER_ARGS] }),
      ),
    );
    for (const n of nodes) {
      await waitFor(async () => (await request(n, 'GET', '/readyz')).status === 200, 15_000, `${n.url} ready`);
    }
    // Publishes may answer 503 until every instance saw every other's bus subscription.
    const warm = await project(nodes[0]);
    for (const n of nodes) {
      await waitFor(async () => (await publish(n, warm.key, 'warm-up', 1)).status === 200, 10_000, `${n.url} publishes`);
    }
    sw = await startSwitch(nodes[0]);
  });
  beforeEach(() => sw.release(nodes[0]));
  after(async () => {
    sw?.close();
    await Promise.all((nodes ?? []).map((n) => n.stop().catch(() => n.kill())));
    await redis?.stop();
  });

  for (const [name, transports] of TRANSPORTS) {
    it(`the reconnect lands on another instance and still recovers, exactly (${name})`, T, async () => {
      await recoverScenario(nodes[0], nodes[1], sw, transports);
    });
  }

  it('and again from there to the third instance', T, async () => {
    const { id, key } = await project(nodes[0]);
    sw.release(nodes[1]);
    const { socket, got } = await client(sw, id);
    await listen(socket, 'feed');
    await published(nodes[2], key, 'feed', { n: 1 });
    await waitFor(() => got.feed?.length === 1, 5000, 'event 1');
    await dropEngine(sw, socket, nodes[1]);
    for (const n of [2, 3]) await published(nodes[0], key, 'feed', { n });
    assert.equal(await reconnect(sw, socket, nodes[2]), true);
    await published(nodes[1], key, 'feed', { n: 4 });
    await waitFor(() => got.feed.at(-1) === 4, 5000, 'event 4');
    assert.deepEqual(got.feed, range(1, 4));
    socket.disconnect();
  });
});
