// Herald end-to-end tests: the real server binary, driven over REST and socket.io-client the
// way a user's publisher and browser would. Run with `npm test` in this directory after
// `cargo build -p herald-server`.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  expectNoEvent,
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

const MAX_CHANNELS = 3;
const DEFAULT_MAX_PAYLOAD = 65536;
const ENVELOPE_ALLOWANCE = 1024;
const T = { timeout: 20_000 };

/** A project with a publish key, ready for sockets. */
async function project(h, prefix = 'p') {
  const id = uid(prefix);
  await createProject(h, id);
  const { key } = await createKey(h, id, ['publish_event']);
  return { id, key };
}

/** Connects and listens to `channel`, asserting the ack is ok. */
async function subscriber(h, projectId, channel, opts) {
  const socket = await connect(h, projectId, opts);
  const ack = await listen(socket, channel);
  assert.deepEqual(ack, { ok: true }, `listen ${channel} should succeed`);
  return socket;
}

/** Asserts a publish answered 200 with an id, and returns the id. */
function publishedId(res) {
  assert.equal(res.status, 200, `publish should answer 200, got ${res.status}: ${JSON.stringify(res.body)}`);
  assert.equal(typeof res.body?.id, 'string', `publish answer should carry an id: ${JSON.stringify(res.body)}`);
  assert.ok(res.body.id.length > 0);
  return res.body.id;
}

/**
 * An event without its channel position (`offset`, `epoch`: history.test.mjs checks them),
 * asserting it carries one.
 */
function bare({ offset, epoch, ...event }) {
  assert.equal(typeof offset, 'number', `event should carry an offset: ${JSON.stringify(event)}`);
  assert.equal(typeof epoch, 'string', `event should carry an epoch: ${JSON.stringify(event)}`);
  return event;
}

/** Splits an Engine.IO v4 polling body into packets. */
const eioPackets = (text) => (text ?? '').split('\x1e').filter((p) => p.length > 0);

/** Opens an Engine.IO polling session; returns the raw response and, when it opened, the sid. */
async function pollingHandshake(h, headers = {}) {
  const res = await request(h, 'GET', '/socket.io/?EIO=4&transport=polling', { headers });
  let sid;
  if (res.status === 200 && typeof res.body === 'string' && res.body.startsWith('0')) {
    sid = JSON.parse(res.body.slice(1)).sid;
  }
  return { ...res, sid };
}

describe('herald core', () => {
  /** @type {Awaited<ReturnType<typeof startHerald>>} */
  let h;

  before(async () => {
    h = await startHerald({ extraArgs: ['--max-channels-per-socket', String(MAX_CHANNELS)] });
  });

  after(async () => {
    await h?.stop();
  });

  it('0. a listen sent the instant the socket connects is answered', T, async () => {
    // socket.io-client buffers emits made before CONNECT and flushes them right after it, so
    // the server must have its handlers in place before it sends CONNECT.
    const project = uid('eager');
    await createProject(h, project);
    const { io } = await import('socket.io-client');
    for (let i = 0; i < 30; i++) {
      const socket = io(h.url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { projectId: project } });
      h.sockets.add(socket);
      const ack = await socket.timeout(3000).emitWithAck('listen', { channelName: 'eager' });
      assert.equal(ack.ok, true, `socket ${i}: ${JSON.stringify(ack)}`);
      socket.disconnect();
    }
  });

  it('1. listen, publish over REST, receive the exact payload and id', T, async () => {
    const p = await project(h);
    const channel = 'orders';
    const socket = await connect(h, p.id);

    const sys = nextEvent(socket, 'system_message');
    const ack = await listen(socket, channel);
    assert.deepEqual(ack, { ok: true });
    const msg = await sys;
    assert.equal(msg.code, 'Success');
    assert.equal(typeof msg.message, 'string');
    assert.equal(msg.data?.channelName, channel);

    const payload = {
      order: { id: 42, total: 19.99, currency: 'EUR', paid: true, coupon: null },
      items: [
        { sku: 'A-1', qty: 3, price: 1.5e-3 },
        { sku: 'B-2', qty: 0, tags: [] },
      ],
      note: 'café ☕ 日本語 — «quotes» "double" \\ back\nline\ttab 🚀',
      big: 9007199254740991,
      negative: -273.15,
      exp: 6.02e23,
      empty: {},
    };
    const received = nextEvent(socket, 'event');
    const id = publishedId(await publish(h, p.key, channel, payload));
    const event = await received;
    assert.deepEqual(bare(event), { id, channelName: channel, payload });

    // The key also works as X-API-Key, and scalar payloads arrive unchanged.
    const second = nextEvent(socket, 'event');
    const id2 = publishedId(await publish(h, p.key, channel, 'plain string ✓', { header: 'x-api-key' }));
    assert.notEqual(id2, id, 'every publish gets its own id');
    assert.deepEqual(bare(await second), { id: id2, channelName: channel, payload: 'plain string ✓' });
  });

  it('2. remove stops delivery to that socket only', T, async () => {
    const p = await project(h);
    const channel = 'news';
    const leaver = await subscriber(h, p.id, channel);
    const stayer = await subscriber(h, p.id, channel);

    const sys = nextEvent(leaver, 'system_message');
    assert.deepEqual(await remove(leaver, channel), { ok: true });
    const msg = await sys;
    assert.equal(msg.code, 'Success');
    assert.equal(msg.data?.channelName, channel);

    const got = nextEvent(stayer, 'event');
    const none = expectNoEvent(leaver, 'event', 500);
    const id = publishedId(await publish(h, p.key, channel, { n: 1 }));
    assert.deepEqual(bare(await got), { id, channelName: channel, payload: { n: 1 } });
    await none;
  });

  it('3. 100 websocket subscribers on one channel each receive one publish exactly once', T, async () => {
    const p = await project(h);
    const channel = 'fanout';
    const sockets = await Promise.all(Array.from({ length: 100 }, () => subscriber(h, p.id, channel)));
    const inboxes = sockets.map((s) => collectEvents(s, 'event'));

    const id = publishedId(await publish(h, p.key, channel, { hello: 'everyone' }));
    await waitFor(
      () => inboxes.every((box) => box.length >= 1),
      5000,
      `all 100 sockets to receive the event (got ${inboxes.filter((b) => b.length > 0).length})`,
    ).catch((err) => {
      err.message += ` — ${inboxes.filter((b) => b.length > 0).length}/100 received`;
      throw err;
    });
    await sleep(300); // room for duplicates to show up
    inboxes.forEach((box, i) => {
      assert.equal(box.length, 1, `socket ${i} received ${box.length} events`);
      assert.deepEqual(bare(box[0]), { id, channelName: channel, payload: { hello: 'everyone' } });
    });
    for (const s of sockets) s.disconnect();
  });

  it('4. the polling transport works too', T, async () => {
    const p = await project(h);
    const channel = 'polled';
    const socket = await connect(h, p.id, { transports: ['polling'] });
    assert.equal(socket.io.engine.transport.name, 'polling');

    const sys = nextEvent(socket, 'system_message');
    assert.deepEqual(await listen(socket, channel), { ok: true });
    assert.equal((await sys).code, 'Success');

    const got = nextEvent(socket, 'event');
    const id = publishedId(await publish(h, p.key, channel, { via: 'polling', n: [1, 2, 3] }));
    assert.deepEqual(bare(await got), { id, channelName: channel, payload: { via: 'polling', n: [1, 2, 3] } });
    assert.equal(socket.io.engine.transport.name, 'polling', 'never upgraded');
  });

  it('5. tenant isolation: a key publishes into its own project only', T, async () => {
    const a = await project(h, 'tenant-a');
    const b = await project(h, 'tenant-b');
    const channel = 'orders';
    const a1 = await subscriber(h, a.id, channel);
    const a2 = await subscriber(h, a.id, channel);
    const b1 = await subscriber(h, b.id, channel);

    // A's key reaches A's sockets, never B's.
    {
      const gotA1 = nextEvent(a1, 'event');
      const gotA2 = nextEvent(a2, 'event');
      const noneB = expectNoEvent(b1, 'event', 500);
      const id = publishedId(await publish(h, a.key, channel, { for: 'a' }));
      assert.deepEqual(bare(await gotA1), { id, channelName: channel, payload: { for: 'a' } });
      assert.deepEqual(bare(await gotA2), { id, channelName: channel, payload: { for: 'a' } });
      await noneB;
    }
    // And the other way round.
    {
      const gotB = nextEvent(b1, 'event');
      const noneA = expectNoEvent(a1, 'event', 500);
      const id = publishedId(await publish(h, b.key, channel, { for: 'b' }));
      assert.deepEqual(bare(await gotB), { id, channelName: channel, payload: { for: 'b' } });
      await noneA;
    }
    // Trying to name B from A's key does not reach B either: a `projectId` in the body is not
    // honoured, and a `{project}:{channel}` room name is not a valid channel name.
    {
      const noneB = expectNoEvent(b1, 'event', 500);
      const attempt = await publish(h, a.key, channel, { sneaky: true }, { extra: { projectId: b.id } });
      assert.ok([200, 400].includes(attempt.status), `unexpected status ${attempt.status}`);
      const roomName = await publish(h, a.key, `${b.id}:${channel}`, { sneaky: true });
      assert.equal(roomName.status, 400);
      assert.equal(roomName.body?.error?.code, 'invalid_channel_name');
      await noneB;
    }
    // An unknown project cannot connect at all.
    await assert.rejects(connect(h, uid('nobody')), (err) => {
      assert.match(err.message, /unknown_project/);
      return true;
    });
  });

  it('6. connect errors name the problem', T, async () => {
    const cases = [
      { what: 'no auth', projectId: undefined, code: 'missing_project_id' },
      { what: 'auth without projectId', opts: { auth: {} }, code: 'missing_project_id' },
      { what: 'non-string projectId', opts: { auth: { projectId: 42 } }, code: 'missing_project_id' },
      { what: 'unknown project', projectId: uid('ghost'), code: 'unknown_project' },
      { what: 'uppercase id', projectId: 'Acme', code: 'invalid_project_id' },
      { what: 'id with spaces', projectId: 'a b', code: 'invalid_project_id' },
      { what: 'id with a colon', projectId: 'acme:orders', code: 'invalid_project_id' },
    ];
    for (const c of cases) {
      await assert.rejects(
        connect(h, c.projectId, c.opts),
        (err) => {
          assert.ok(err instanceof Error, `${c.what}: expected a connect_error`);
          assert.ok(err.message.includes(c.code), `${c.what}: expected ${c.code} in ${JSON.stringify(err.message)}`);
          assert.match(err.message, new RegExp(`^${c.code}: .+`), `${c.what}: message format "<code>: <text>"`);
          return true;
        },
        `${c.what} should be refused`,
      );
    }
  });

  it('7. listen refusals answer with a code and an Error system_message', T, async () => {
    const p = await project(h);
    const socket = await connect(h, p.id);
    const systemMessages = collectEvents(socket, 'system_message');

    /** Emits `event` with `args`, expects a refusal `code` in the ack and in a system_message. */
    async function expectRefusal(what, code, event, ...args) {
      const before = systemMessages.length;
      const ack = await socket.timeout(5000).emitWithAck(event, ...args);
      assert.equal(ack?.ok, false, `${what}: ack should be a refusal: ${JSON.stringify(ack)}`);
      assert.equal(ack.code, code, `${what}: ${JSON.stringify(ack)}`);
      assert.equal(typeof ack.message, 'string');
      assert.ok(ack.message.length > 0, `${what}: the ack should explain`);
      await waitFor(() => systemMessages.length > before, 2000, `${what}: Error system_message`);
      const msg = systemMessages[before];
      assert.equal(msg.code, 'Error', `${what}: ${JSON.stringify(msg)}`);
      assert.equal(msg.data?.errorCode, code, `${what}: ${JSON.stringify(msg)}`);
    }

    // Invalid names.
    for (const name of ['a b', 'acme:orders', 'café', 'slash/y', '', 'x'.repeat(165)]) {
      await expectRefusal(`name ${JSON.stringify(name.slice(0, 20))}`, 'invalid_channel_name', 'listen', {
        channelName: name,
      });
    }
    // Names that read as private without being private.
    for (const name of ['privateer', 'Private-x', 'private-', 'PRIVATE_x', 'private']) {
      await expectRefusal(`name ${name}`, 'ambiguous_channel_name', 'listen', { channelName: name });
    }
    // A private channel needs a token.
    await expectRefusal('private without token', 'token_missing', 'listen', { channelName: 'private-u1' });
    // Malformed bodies are answered, never ignored.
    await expectRefusal('string body', 'invalid_body', 'listen', 'orders');
    await expectRefusal('empty object', 'invalid_body', 'listen', {});
    await expectRefusal('numeric channelName', 'invalid_body', 'listen', { channelName: 7 });
    await expectRefusal('null body', 'invalid_body', 'listen', null);
    await expectRefusal('no body at all', 'invalid_body', 'listen');
    // Unknown events.
    await expectRefusal('unknown event', 'unknown_event', 'foo', { channelName: 'orders' });

    // The longest valid name is fine (and counts toward the limit).
    assert.deepEqual(await listen(socket, 'x'.repeat(164)), { ok: true });
    // Channel limit: MAX_CHANNELS per socket; refusals above did not count.
    for (let i = 1; i < MAX_CHANNELS; i++) {
      assert.deepEqual(await listen(socket, `ch-${i}`), { ok: true }, `channel ${i + 1} of ${MAX_CHANNELS}`);
    }
    await expectRefusal('one channel too many', 'too_many_channels', 'listen', { channelName: 'ch-extra' });
    // After leaving one, there is room again.
    assert.deepEqual(await remove(socket, 'ch-1'), { ok: true });
    assert.deepEqual(await listen(socket, 'ch-extra'), { ok: true });
    assert.ok(socket.connected, 'refusals never disconnect the socket');
  });

  it('8. an oversize WebSocket message closes the socket; a normal one does not', T, async () => {
    const p = await project(h);
    const socket = await connect(h, p.id);
    const disconnects = collectEvents(socket, 'disconnect');

    // A 60 KB message is fine.
    const ack = await socket.timeout(5000).emitWithAck('listen', { channelName: 'big-ok', pad: 'x'.repeat(60_000) });
    assert.equal(typeof ack, 'object', 'a normal message is answered');
    await sleep(200);
    assert.ok(socket.connected, 'a normal-sized message keeps the socket open');
    assert.equal(disconnects.length, 0);

    // A 100 KB one closes the connection.
    const closed = nextEvent(socket, 'disconnect', 5000);
    socket.emit('listen', { channelName: 'big-no', pad: 'x'.repeat(100_000) });
    const reason = await closed;
    assert.notEqual(reason, 'io client disconnect');
    assert.equal(socket.connected, false);
  });

  it('8b. the WebSocket message limit is max-payload-bytes + 1024, inclusive', T, async () => {
    const limit = DEFAULT_MAX_PAYLOAD + ENVELOPE_ALLOWANCE;
    // socket.emit('listen', body) without an ack goes out as the text frame `42["listen",body]`.
    const frameLen = (body) => Buffer.byteLength(`42${JSON.stringify(['listen', body])}`);
    const padded = (channelName, total) => {
      const base = frameLen({ channelName, pad: '' });
      const body = { channelName, pad: 'x'.repeat(total - base) };
      assert.equal(frameLen(body), total);
      return body;
    };

    const p = await project(h);
    const socket = await connect(h, p.id);
    const disconnects = collectEvents(socket, 'disconnect');

    const sys = nextEvent(socket, 'system_message');
    socket.emit('listen', padded('at-limit', limit));
    const msg = await sys;
    assert.equal(msg.code, 'Success', `a ${limit}-byte message is processed: ${JSON.stringify(msg)}`);
    assert.equal(msg.data?.channelName, 'at-limit');
    assert.equal(disconnects.length, 0, `a ${limit}-byte message keeps the socket open`);

    const closed = nextEvent(socket, 'disconnect', 5000);
    socket.emit('listen', padded('over-limit', limit + 1));
    await closed.catch(() => {
      assert.fail(`a ${limit + 1}-byte message should close the socket`);
    });
  });

  it('9. deleting a project disconnects its sockets and kills its keys', T, async () => {
    const p = await project(h, 'doomed');
    const other = await project(h, 'survivor');
    const socket = await subscriber(h, p.id, 'orders');
    const bystander = await subscriber(h, other.id, 'orders');

    const disconnected = nextEvent(socket, 'disconnect', 5000);
    const bystanderStays = expectNoEvent(bystander, 'disconnect', 1000);
    const del = await admin(h, 'DELETE', `/v1/admin/projects/${p.id}`);
    assert.equal(del.status, 204, JSON.stringify(del.body));
    const reason = await disconnected;
    assert.notEqual(reason, 'io client disconnect');
    await bystanderStays;

    const res = await publish(h, p.key, 'orders', { after: 'delete' });
    assert.equal(res.status, 401, `publish with a deleted project's key: ${JSON.stringify(res.body)}`);
    assert.equal(res.body?.error?.code, 'unknown_api_key');
    assert.equal(typeof res.body?.error?.message, 'string');

    await assert.rejects(connect(h, p.id), /unknown_project/);
    const projects = await admin(h, 'GET', '/v1/admin/projects');
    assert.equal(projects.status, 200);
    assert.ok(!projects.body.some((x) => x.id === p.id), 'the deleted project is not listed');
  });

  it('10. origin allowlist', T, async () => {
    // Default: any origin.
    const open = await pollingHandshake(h, { origin: 'https://evil.example' });
    assert.equal(open.status, 200, `default server should accept any origin: ${JSON.stringify(open.body)}`);
    assert.ok(open.sid);

    const g = await startHerald({ extraArgs: ['--allowed-origins', 'https://good.example'] });
    try {
      const evil = await pollingHandshake(g, { origin: 'https://evil.example' });
      assert.equal(evil.status, 403, `evil origin handshake: ${evil.status} ${JSON.stringify(evil.body)}`);
      assert.equal(evil.sid, undefined);

      const good = await pollingHandshake(g, { origin: 'https://good.example' });
      assert.equal(good.status, 200, `good origin handshake: ${good.status} ${JSON.stringify(good.body)}`);
      assert.ok(good.sid, `good origin gets a session: ${JSON.stringify(good.body)}`);

      const preflight = (origin) =>
        request(g, 'OPTIONS', '/v1/publishers/events/publish', {
          headers: {
            origin,
            'access-control-request-method': 'POST',
            'access-control-request-headers': 'authorization,content-type',
          },
        });
      const okPre = await preflight('https://good.example');
      assert.ok(okPre.status >= 200 && okPre.status < 300, `preflight status ${okPre.status}`);
      assert.equal(okPre.headers.get('access-control-allow-origin'), 'https://good.example');

      const badPre = await preflight('https://evil.example');
      assert.notEqual(badPre.headers.get('access-control-allow-origin'), 'https://evil.example');
      assert.notEqual(badPre.headers.get('access-control-allow-origin'), '*');
    } finally {
      await g.stop();
    }
  });

  it('11. an Engine.IO session that never sends CONNECT is closed after connect-timeout-secs', T, async () => {
    const t = await startHerald({ extraArgs: ['--connect-timeout-secs', '1'] });
    try {
      const projectId = uid('timeout');
      await createProject(t, projectId);
      const poll = (sid) =>
        request(t, 'GET', `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`);

      // `idle` never joins the namespace; `joined` sends CONNECT right away.
      const idle = await pollingHandshake(t);
      assert.ok(idle.sid, `handshake: ${JSON.stringify(idle.body)}`);
      const joined = await pollingHandshake(t);
      assert.ok(joined.sid);
      const post = await request(
        t,
        'POST',
        `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(joined.sid)}`,
        { headers: { 'content-type': 'text/plain;charset=UTF-8' }, body: `40${JSON.stringify({ projectId })}` },
      );
      assert.equal(post.status, 200, `CONNECT post: ${JSON.stringify(post.body)}`);

      await sleep(2000);

      let idleRes;
      try {
        idleRes = await Promise.race([
          poll(idle.sid),
          sleep(3000).then(() => ({ status: 'still open (the long-poll was pending for 3 s)' })),
        ]);
      } catch (err) {
        idleRes = { status: `error ${err.message}` };
      }
      const closed =
        idleRes.status === 400 ||
        (idleRes.status === 200 && eioPackets(idleRes.body).includes('1'));
      assert.ok(
        closed,
        `the idle session should be gone after 2 s (400 or a close packet), got ${idleRes.status} ${JSON.stringify(idleRes.body)}`,
      );

      // The session that joined in time is alive and got its CONNECT answer.
      const joinedRes = await poll(joined.sid);
      assert.equal(joinedRes.status, 200, JSON.stringify(joinedRes.body));
      const packets = eioPackets(joinedRes.body);
      assert.ok(
        packets.some((pk) => pk.startsWith('40{')),
        `the joined session should get a CONNECT ack: ${JSON.stringify(joinedRes.body)}`,
      );
    } finally {
      await t.stop();
    }
  });
});
