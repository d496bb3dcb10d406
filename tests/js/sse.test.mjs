// The Server-Sent Events transport end to end (issue 18): `GET /v1/sse` with the `eventsource`
// npm package and with a plain fetch reader; public and private channels; every refusal as an
// HTTP error with its code; resume with Last-Event-ID (exactly the missed events, once, in
// order, before live ones; `history_expired` beyond retention); revocation; a stream that
// stops reading closed as a slow consumer while another is unaffected; Redis mode with three
// instances, the resume landing on another instance. The real binary.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import { EventSource } from 'eventsource';

import {
  admin,
  createKey,
  createProject,
  publish,
  published,
  request,
  signToken,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startInstances, startLinkProxy } from './redis-harness.mjs';

const T = { timeout: 30_000 };

/** A project (optionally with `history` settings) and a key with every scope. */
async function project(h, history) {
  const id = uid('sse');
  await createProject(h, id);
  if (history) {
    const res = await admin(h, 'PATCH', `/v1/admin/projects/${id}`, { history });
    assert.equal(res.status, 200, JSON.stringify(res.body));
  }
  const key = await createKey(h, id, ['publish_event', 'sign_token']);
  return { id, key: key.key, keyId: key.id };
}

function streamUrl(base, projectId, { channels = [], tokens = [], extra = '' } = {}) {
  const q = new URLSearchParams();
  if (projectId !== undefined) q.append('projectId', projectId);
  for (const c of channels) q.append('channel', c);
  for (const t of tokens) q.append('token', t);
  return `${base}/v1/sse?${q}${extra}`;
}

/**
 * A stream read with fetch: its messages as `{ event, data (parsed), id }`, `comments`, and
 * `close()`. Rejects when the answer is not 200 (with `status` and the JSON body).
 */
async function openStream(url, headers = {}) {
  const controller = new AbortController();
  const res = await fetch(url, { headers, signal: controller.signal });
  if (res.status !== 200) {
    const err = new Error(`status ${res.status}`);
    err.status = res.status;
    err.body = await res.json();
    throw err;
  }
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  const stream = { messages: [], comments: 0, retry: null, ended: false, close: () => controller.abort() };
  const events = () => stream.messages.filter((m) => m.event === 'event');
  stream.events = events;
  stream.system = () => stream.messages.filter((m) => m.event === 'system_message');
  (async () => {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body) {
        buf += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const m = { event: 'message', data: [], id: undefined };
          let comment = false;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comment = true;
            else if (line.startsWith('event: ')) m.event = line.slice(7);
            else if (line.startsWith('data: ')) m.data.push(line.slice(6));
            else if (line.startsWith('id: ')) m.id = line.slice(4);
            else if (line.startsWith('retry: ')) stream.retry = Number(line.slice(7));
          }
          if (comment) stream.comments++;
          else if (m.data.length > 0) stream.messages.push({ ...m, data: JSON.parse(m.data.join('\n')) });
        }
      }
    } catch (e) {
      // Aborted by close(), or the connection broke before the stream's end.
      stream.error = e;
    }
    stream.ended = true;
  })();
  return stream;
}

/** The `Success` of `channel` in a stream. */
const successOf = (stream, channel) =>
  stream.system().find((m) => m.data.code === 'Success' && m.data.data.channelName === channel);

describe('SSE (embedded mode)', () => {
  let h;
  before(async () => {
    h = await startHerald({
      extraArgs: ['--max-channels-per-socket', '3', '--allowed-origins', 'https://app.example', '--sse-heartbeat-secs', '1'],
    });
  });
  after(async () => h?.stop());

  it('the eventsource package receives public and private events, exact payloads', T, async () => {
    const { id, key } = await project(h);
    const token = await signToken(h, key, 'private-inbox');
    const es = new EventSource(streamUrl(h.url, id, { channels: ['news'], tokens: [token] }));
    const got = [];
    const system = [];
    es.addEventListener('event', (e) => got.push(JSON.parse(e.data)));
    es.addEventListener('system_message', (e) => system.push(JSON.parse(e.data)));
    try {
      await waitFor(() => system.length === 2, 5000, 'both channels listened to');
      assert.deepEqual(system.map((m) => [m.code, m.data.channelName]).sort(), [
        ['Success', 'news'],
        ['Success', 'private-inbox'],
      ]);
      const payloads = [{ n: 1, text: 'héllo ✓', nested: { a: [1, null, true] } }, 'plain string', 42];
      for (const p of payloads) await published(h, key, 'news', p);
      await published(h, key, 'private-inbox', { secret: 'for you' });
      await waitFor(() => got.length === 4, 5000, 'four events');
      assert.deepEqual(got.map((e) => e.payload), [...payloads, { secret: 'for you' }]);
      assert.deepEqual(got.map((e) => e.channelName), ['news', 'news', 'news', 'private-inbox']);
      assert.deepEqual(got.map((e) => e.offset), [1, 2, 3, 1]);
      assert.ok(got.every((e) => typeof e.id === 'string'));
    } finally {
      es.close();
    }
  });

  it('a payload published with line breaks between its tokens arrives as the same JSON', T, async () => {
    const { id, key } = await project(h);
    const s = await openStream(streamUrl(h.url, id, { channels: ['raw'] }));
    try {
      await waitFor(() => successOf(s, 'raw'), 5000, 'listening');
      const res = await fetch(`${h.url}/v1/publishers/events/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: '{"channelName":"raw",\r\n "payload": {\n  "a": 1,\r  "b": "x\\ny"\n}\n}',
      });
      assert.equal(res.status, 200);
      await waitFor(() => s.events().length === 1, 5000, 'the event');
      assert.deepEqual(s.events()[0].data.payload, { a: 1, b: 'x\ny' });
      assert.equal(s.retry, 2000);
      // Idle: heartbeat comments (every second here).
      await waitFor(() => s.comments >= 1, 5000, 'a heartbeat');
    } finally {
      s.close();
    }
  });

  it('refusals are HTTP errors with their codes, before any stream', T, async () => {
    const { id, key } = await project(h);
    const refused = async (url, headers = {}) => {
      const res = await fetch(url, { headers });
      const body = await res.json();
      assert.match(res.headers.get('content-type'), /application\/json/);
      return [res.status, body.error.code];
    };
    assert.deepEqual(await refused(streamUrl(h.url, uid('nope'), { channels: ['a'] })), [404, 'unknown_project']);
    assert.deepEqual(await refused(streamUrl(h.url, undefined, { channels: ['a'] })), [400, 'missing_project_id']);
    assert.deepEqual(await refused(streamUrl(h.url, id)), [400, 'invalid_body']);
    assert.deepEqual(await refused(streamUrl(h.url, id, { channels: ['bad name'] })), [400, 'invalid_channel_name']);
    assert.deepEqual(await refused(streamUrl(h.url, id, { channels: ['privateer'] })), [400, 'ambiguous_channel_name']);
    assert.deepEqual(await refused(streamUrl(h.url, id, { channels: ['a', 'b', 'c', 'd'] })), [400, 'too_many_channels']);
    assert.deepEqual(await refused(streamUrl(h.url, id, { channels: ['private-x'] })), [401, 'token_missing']);
    assert.deepEqual(await refused(streamUrl(h.url, id, { tokens: ['garbage'] })), [401, 'token_malformed']);
    const other = await project(h);
    const foreign = await signToken(h, other.key, 'private-x');
    assert.deepEqual(await refused(streamUrl(h.url, id, { tokens: [foreign] })), [401, 'token_project_mismatch']);
    assert.deepEqual(
      await refused(streamUrl(h.url, id, { channels: ['a'] }), { origin: 'https://evil.example' }),
      [403, 'origin_not_allowed'],
    );
    assert.deepEqual(await refused(streamUrl(h.url, id, { channels: ['a'] }), { 'last-event-id': 'v9|nonsense' }), [
      400,
      'invalid_body',
    ]);
    // The allowed origin gets the stream, with CORS.
    const ok = await fetch(streamUrl(h.url, id, { channels: ['a'] }), { headers: { origin: 'https://app.example' } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('access-control-allow-origin'), 'https://app.example');
    await ok.body.cancel();
    // A refused stream left nothing behind: a good one after it works.
    const s = await openStream(streamUrl(h.url, id, { channels: ['a'] }));
    await waitFor(() => successOf(s, 'a'), 5000, 'listening');
    await published(h, key, 'a', 1);
    await waitFor(() => s.events().length === 1, 5000, 'the event');
    s.close();
  });

  it('Last-Event-ID resumes: exactly the missed events, once, in order, before live ones', T, async () => {
    const { id, key } = await project(h);
    const url = streamUrl(h.url, id, { channels: ['feed', 'side'] });
    const first = await openStream(url);
    await waitFor(() => successOf(first, 'feed') && successOf(first, 'side'), 5000, 'listening');
    for (let i = 1; i <= 3; i++) await published(h, key, 'feed', { n: i });
    await published(h, key, 'side', { s: 1 });
    await waitFor(() => first.events().length === 4, 5000, 'four events');
    const lastId = first.messages.at(-1).id;
    first.close();
    // Away: more on both channels.
    for (let i = 4; i <= 6; i++) await published(h, key, 'feed', { n: i });
    await published(h, key, 'side', { s: 2 });

    const again = await openStream(url, { 'last-event-id': lastId });
    try {
      await waitFor(() => successOf(again, 'feed') && successOf(again, 'side'), 5000, 'resumed');
      // Replays first, each channel's Success after its own replay, then live.
      assert.deepEqual(
        again.events().map((e) => [e.data.channelName, e.data.offset]),
        [['feed', 4], ['feed', 5], ['feed', 6], ['side', 2]],
      );
      for (const c of ['feed', 'side']) {
        assert.equal(successOf(again, c).data.data.recovered, true);
      }
      await published(h, key, 'feed', { n: 7 });
      await waitFor(() => again.events().length === 5, 5000, 'the live event');
      assert.deepEqual(again.events().map((e) => e.data.payload.n ?? e.data.payload.s), [4, 5, 6, 2, 7]);
      // Every message's id is a cursor a resume accepts; the last one names both channels.
      assert.match(again.messages.at(-1).id, /^v1\|/);
    } finally {
      again.close();
    }
  });

  it('a resume beyond retention is told history_expired; a changed epoch epoch_changed', T, async () => {
    const { id, key } = await project(h, { size: 3 });
    const url = streamUrl(h.url, id, { channels: ['short'] });
    const first = await openStream(url);
    await waitFor(() => successOf(first, 'short'), 5000, 'listening');
    await published(h, key, 'short', 1);
    await waitFor(() => first.events().length === 1, 5000, 'one event');
    const lastId = first.messages.at(-1).id;
    first.close();
    for (let i = 2; i <= 10; i++) await published(h, key, 'short', i);
    const again = await openStream(url, { 'last-event-id': lastId });
    await waitFor(() => successOf(again, 'short'), 5000, 'answered');
    assert.equal(successOf(again, 'short').data.data.recovered, false);
    assert.equal(successOf(again, 'short').data.data.reason, 'history_expired');
    assert.deepEqual(again.events(), []);
    again.close();
    const forged = lastId.replace(/:[^:|]+:(\d+)$/, ':otherepoch:$1');
    const third = await openStream(url, { 'last-event-id': forged });
    await waitFor(() => successOf(third, 'short'), 5000, 'answered');
    assert.equal(successOf(third, 'short').data.data.reason, 'epoch_changed');
    third.close();
  });

  it('the eventsource package reconnects by itself and resumes with Last-Event-ID', T, async () => {
    const { id, key } = await project(h);
    const proxy = await startLinkProxy(Number(new URL(h.url).port));
    const base = `http://127.0.0.1:${new URL(proxy.url).port}`;
    const es = new EventSource(streamUrl(base, id, { channels: ['live'] }));
    const got = [];
    let opened = 0;
    es.addEventListener('open', () => opened++);
    es.addEventListener('event', (e) => got.push(JSON.parse(e.data).payload));
    try {
      await waitFor(() => opened === 1, 5000, 'open');
      await sleep(100);
      await published(h, key, 'live', 1);
      await waitFor(() => got.length === 1, 5000, 'the first event');
      proxy.cut();
      for (let i = 2; i <= 5; i++) await published(h, key, 'live', i);
      proxy.restore();
      await waitFor(() => opened === 2, 10_000, 'the reconnect');
      await waitFor(() => got.length === 5, 5000, 'the missed events');
      await published(h, key, 'live', 6);
      await waitFor(() => got.length === 6, 5000, 'a live event after');
      assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
    } finally {
      es.close();
      await proxy.close?.();
    }
  });

  it('revoking the signing key removes the private channel with RemovedFromChannel', T, async () => {
    const { id, key } = await project(h);
    const signer = await createKey(h, id, ['sign_token']);
    const token = await signToken(h, signer.key, 'private-doomed');
    const s = await openStream(streamUrl(h.url, id, { channels: ['open'], tokens: [token] }));
    try {
      await waitFor(() => successOf(s, 'private-doomed'), 5000, 'listening');
      await published(h, key, 'private-doomed', 'before');
      await waitFor(() => s.events().length === 1, 5000, 'the private event');
      assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${id}/api-keys/${signer.id}`)).status, 204);
      await waitFor(
        () => s.system().find((m) => m.data.code === 'RemovedFromChannel'),
        10_000,
        'RemovedFromChannel',
      );
      const removed = s.system().find((m) => m.data.code === 'RemovedFromChannel');
      assert.deepEqual(removed.data.data.channels, ['private-doomed']);
      await published(h, key, 'private-doomed', 'after');
      await published(h, key, 'open', 'still here');
      await waitFor(() => s.events().length === 2, 5000, 'the public event');
      assert.deepEqual(s.events().map((e) => e.data.payload), ['before', 'still here']);
      assert.equal(s.ended, false);
    } finally {
      s.close();
    }
  });
});

describe('SSE and a graceful shutdown', () => {
  it('a shutting-down server ends its streams cleanly (the client reconnects elsewhere)', T, async () => {
    const h = await startHerald();
    try {
      const { id } = await project(h);
      const s = await openStream(streamUrl(h.url, id, { channels: ['bye'] }));
      await waitFor(() => successOf(s, 'bye'), 5000, 'listening');
      await h.stop();
      await waitFor(() => s.ended, 5000, 'the stream ended');
      assert.equal(s.error, undefined, 'the stream ended with its last chunk, not a broken connection');
    } finally {
      await h.stop().catch(() => {});
    }
  });
});

describe('SSE slow consumers', () => {
  let h;
  let metricsUrl;
  before(async () => {
    h = await startHerald({ extraArgs: ['--socket-buffer', '8', '--metrics-bind', '127.0.0.1:0'] });
    metricsUrl = /herald metrics on (http:\/\/\S+)/.exec(h.logs())[1];
  });
  after(async () => h?.stop());

  const metric = async (name) => {
    const text = await (await fetch(metricsUrl)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ').pop()) : 0;
  };

  it('a stream that stops reading is closed as a slow consumer; another is unaffected', T, async () => {
    const { id, key } = await project(h);
    const url = new URL(streamUrl(h.url, id, { channels: ['flood'] }));
    // A client that sends the request and never reads.
    const stalled = net.connect(Number(url.port), '127.0.0.1');
    stalled.write(`GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n\r\n`);
    stalled.pause();
    const reader = await openStream(url.href);
    await waitFor(async () => (await metric('herald_sse_streams')) === 2, 5000, 'two streams');
    const before = await metric('herald_slow_consumers_total');
    const filler = 'x'.repeat(32 * 1024);
    let n = 0;
    while ((await metric('herald_slow_consumers_total')) === before) {
      for (let i = 0; i < 16; i++) await published(h, key, 'flood', { n: ++n, filler });
      assert.ok(n < 5000, 'no slow-consumer close');
    }
    await waitFor(() => reader.events().length === n, 10_000, `all ${n} events at the reading stream`);
    assert.deepEqual(
      reader.events().map((e) => e.data.payload.n),
      Array.from({ length: n }, (_, i) => i + 1),
    );
    // The stalled stream is gone (its socket shut down after the close timeout).
    await waitFor(async () => (await metric('herald_sse_streams')) === 1, 10_000, 'the stalled stream cleaned up');
    stalled.destroy();
    reader.close();
  });
});

describe('SSE (redis mode, three instances)', () => {
  let cluster;
  let nodes;
  before(async () => {
    cluster = await startInstances(3);
    ({ nodes } = cluster);
  });
  after(async () => cluster?.stop());

  it('streams on every instance get every event once; a resume on another instance recovers', T, async () => {
    const { id, key } = await project(nodes[0]);
    const streams = await Promise.all(nodes.map((n) => openStream(streamUrl(n.url, id, { channels: ['wide'] }))));
    await waitFor(() => streams.every((s) => successOf(s, 'wide')), 5000, 'listening everywhere');
    for (let i = 1; i <= 6; i++) await published(nodes[i % 3], key, 'wide', i);
    await waitFor(() => streams.every((s) => s.events().length === 6), 5000, 'six events everywhere');
    for (const s of streams) assert.deepEqual(s.events().map((e) => e.data.payload), [1, 2, 3, 4, 5, 6]);
    const lastId = streams[0].messages.at(-1).id;
    for (const s of streams) s.close();
    for (let i = 7; i <= 9; i++) await published(nodes[0], key, 'wide', i);
    const resumed = await openStream(streamUrl(nodes[2].url, id, { channels: ['wide'] }), { 'last-event-id': lastId });
    try {
      await waitFor(() => successOf(resumed, 'wide'), 5000, 'resumed');
      assert.equal(successOf(resumed, 'wide').data.data.recovered, true);
      await published(nodes[1], key, 'wide', 10);
      await waitFor(() => resumed.events().length === 4, 5000, 'missed and live');
      assert.deepEqual(resumed.events().map((e) => e.data.payload), [7, 8, 9, 10]);
    } finally {
      resumed.close();
    }
  });
});
