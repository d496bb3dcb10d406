// The JSON nesting bound (docs/PROTOCOL.md § Limits): payloads nested deeper than 32 levels of
// arrays and objects are refused with `payload_too_deep`, on REST (400 and a JSON error body),
// for client events (error ack) and in the handshake `auth` (connect_error), on both
// transports; at the bound exactly they pass, and brackets inside strings do not count.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  connect,
  createKey,
  createProject,
  expectNoEvent,
  listen,
  nextEvent,
  publish,
  request,
  sign,
  startHerald,
  uid,
} from './harness.mjs';

const T = { timeout: 30_000 };
const LIMIT = 32;

/** `depth` nested arrays around `inner`, e.g. nested(2, 1) = [[1]]. */
const nested = (depth, inner = 1) => {
  let v = inner;
  for (let i = 0; i < depth; i += 1) v = [v];
  return v;
};

describe('JSON nesting bound', () => {
  let h;
  let project;
  let key;

  before(async () => {
    h = await startHerald();
    project = uid('deep');
    await createProject(h, project);
    key = (await createKey(h, project, ['publish_event', 'sign_token'])).key;
  });
  after(async () => h?.stop());

  it('REST publish: deeper than the bound is 400 payload_too_deep and reaches nobody', T, async () => {
    const socket = await connect(h, project);
    assert.deepEqual(await listen(socket, 'orders'), { ok: true });

    const atLimit = nextEvent(socket, 'event');
    assert.equal((await publish(h, key, 'orders', nested(LIMIT))).status, 200);
    assert.deepEqual((await atLimit).payload, nested(LIMIT));

    const nothing = expectNoEvent(socket, 'event', 500);
    for (const depth of [LIMIT + 1, 5000]) {
      // Built as text: thousands deep is more than JSON.stringify and the harness need to see.
      const body = `{"channelName":"orders","payload":${'['.repeat(depth)}${']'.repeat(depth)}}`;
      const res = await request(h, 'POST', '/v1/publishers/events/publish', {
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body,
      });
      assert.equal(res.status, 400, `depth ${depth}`);
      assert.equal(res.body.error.code, 'payload_too_deep');
      assert.match(res.body.error.message, /limit is 32/);
    }
    await nothing;

    // Brackets inside strings are text, not nesting.
    const text = nextEvent(socket, 'event');
    const brackets = { s: '[{'.repeat(1000), q: '\\"]]]' };
    assert.equal((await publish(h, key, 'orders', brackets)).status, 200);
    assert.deepEqual((await text).payload, brackets);
  });

  // Not nesting, but the same promise (every payload Herald delivers decodes in every client):
  // a number beyond a 64-bit float's range is refused, where it used to be answered 200 and
  // then fail to decode in the Rust/wasm/mobile clients (and become Infinity in JavaScript).
  it('REST publish: a number beyond a 64-bit float is 400 invalid_body and reaches nobody', T, async () => {
    const socket = await connect(h, project);
    assert.deepEqual(await listen(socket, 'numbers'), { ok: true });
    const nothing = expectNoEvent(socket, 'event', 500);
    for (const number of ['1e400', '-1e309', '[1, {"x": 2e308}]']) {
      const res = await request(h, 'POST', '/v1/publishers/events/publish', {
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: `{"channelName":"numbers","payload":${number}}`,
      });
      assert.equal(res.status, 400, number);
      assert.equal(res.body.error.code, 'invalid_body');
      assert.match(res.body.error.message, /64-bit float/);
    }
    await nothing;

    // The largest float and integers past 64 bits still go through, as the text was sent.
    const big = nextEvent(socket, 'event');
    const body = '{"channelName":"numbers","payload":[1.7976931348623157e308,123456789012345678901234567890]}';
    const res = await request(h, 'POST', '/v1/publishers/events/publish', {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body,
    });
    assert.equal(res.status, 200);
    assert.deepEqual((await big).payload, [1.7976931348623157e308, 1.2345678901234568e29]);
  });

  for (const transports of [['websocket'], ['polling']]) {
    it(`client event and handshake auth over ${transports[0]}`, T, async () => {
      const channel = `private-${uid('c')}`;
      const [a, b] = await Promise.all([connect(h, project, { transports }), connect(h, project, { transports })]);
      for (const s of [a, b]) {
        const { token } = await sign(h, key, channel);
        assert.deepEqual(await listen(s, channel, token), { ok: true });
      }
      const got = nextEvent(b, 'event');
      assert.deepEqual(await a.timeout(5000).emitWithAck('event', { channelName: channel, payload: nested(LIMIT) }), {
        ok: true,
      });
      assert.deepEqual((await got).payload, nested(LIMIT));

      const silent = expectNoEvent(b, 'event', 500);
      // Over polling, earlier requests' Success messages may still be on their way.
      const message = new Promise((resolve) => {
        const onMessage = (m) => {
          if (m.code !== 'Error') return;
          a.off('system_message', onMessage);
          resolve(m);
        };
        a.on('system_message', onMessage);
      });
      const ack = await a.timeout(5000).emitWithAck('event', { channelName: channel, payload: nested(LIMIT + 1) });
      assert.equal(ack.ok, false);
      assert.equal(ack.code, 'payload_too_deep');
      const sys = await message;
      assert.equal(sys.code, 'Error');
      assert.equal(sys.data.errorCode, 'payload_too_deep');
      await silent;
      // Beyond what the packet parsers take (128 levels) the packet is not parsed at all:
      // socketioxide answers invalid_body, the direct transport closes the connection (1002).
      if (transports[0] === 'polling') {
        const unparsed = await a.timeout(5000).emitWithAck('event', { channelName: channel, payload: nested(200) });
        assert.equal(unparsed.code, 'invalid_body');
      } else {
        const closed = nextEvent(a, 'disconnect');
        a.emit('event', { channelName: channel, payload: nested(200) });
        await closed;
      }

      await assert.rejects(
        connect(h, undefined, { transports, auth: { projectId: project, extra: nested(LIMIT) } }),
        (err) => err.message.startsWith('payload_too_deep:'),
      );
      // At the bound (the auth object is one level) the handshake passes.
      const ok = await connect(h, undefined, { transports, auth: { projectId: project, extra: nested(LIMIT - 1) } });
      assert.ok(ok.connected);
    });
  }
});
