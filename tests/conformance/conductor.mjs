#!/usr/bin/env node
// The conductor of the conformance suite: the server side of every scenario, written once for
// the three runners (Rust, browser, Kotlin). It starts the real `herald` binary on a free port
// with its own data dir, and serves a small HTTP control API on another port of 127.0.0.1:
//
//   POST /scenario   a fresh project with a publisher key and a signing key; token counters and
//                    the token mode reset. Answers {project, herald}.
//   POST /step       runs one `server` step of scenarios.json (the step object is the body):
//                    publish → {id}, delete_key, restart, flood → {published}, tokens,
//                    expect_token_requests, history, cut, mend, publish_stream, stop_stream →
//                    {published}, member_join, member_leave. Answers 200 {ok: true, …} or
//                    422 {ok: false, error}.
//
// The `herald` URL handed to clients is a small TCP proxy the conductor owns in front of
// Herald (it forwards bytes, nothing else): `cut` closes every client connection through it
// and refuses new ones until `mend`, so a scenario can drop a client's connection without
// restarting Herald. The conductor's own REST calls go to Herald directly.
//   POST /token      the clients' token provider: {channel} → {token}, as an app's backend
//                    would sign it (POST /v1/publishers/sign with the signing key; a
//                    `presence-…` channel's token names the member CLIENT_USER), or, per the
//                    token mode, a token for another channel or a string that is no JWT.
//
// The other members of a presence channel (member_join, member_leave) are played by the
// conductor itself: Socket.IO clients over Engine.IO long-polling (fetch only), straight to
// Herald (not through the proxy, so `cut` drops only the client under test).
//   POST /hold, POST /release, GET /hold
//                    a flag a runner may use to block a client (the browser page polls it with
//                    synchronous XHR while its event loop is blocked); GET answers "held" or
//                    "released".
//   POST /stop       stops Herald and exits.
//
// It prints one JSON line on stdout once ready: {"control", "herald", "project", "pid"}.
// It also stops Herald and exits when its stdin closes (the runner died) or on SIGTERM/SIGINT,
// so no process outlives a run. Every response carries `access-control-allow-origin: *` (the
// browser page calls /token and /hold from its own origin).
//
// The binary is $HERALD_BIN, else the newer of target/release/herald and target/debug/herald
// (under $CARGO_TARGET_DIR when set). No npm dependency: Node 20+ (fetch) is enough.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { createConnection, createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Frames buffered per socket: small, so the flood step makes a non-reading client slow quickly. */
const SOCKET_BUFFER = 16;
const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
/** How long expect_token_requests waits for the count to be reached. */
const EXPECT_TIMEOUT_MS = 10_000;
/** The flood gives up when no slow-consumer close came after this many events or this long. */
const FLOOD_MAX_EVENTS = 20_000;
const FLOOD_MAX_MS = 45_000;
const FLOOD_IN_FLIGHT = 4;
/** The user id (and info) a presence token from POST /token names: the client under test. */
const CLIENT_USER = 'client';
const CLIENT_INFO = { name: 'Client' };

function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(repoRoot, 'target');
  const found = ['release', 'debug']
    .map((profile) => path.join(target, profile, 'herald'))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (found.length === 0) {
    throw new Error(`no herald binary: set HERALD_BIN or run \`cargo build -p herald-server\` (looked in ${target})`);
  }
  return found[0];
}

const bin = heraldBin();
const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-conformance-'));
const adminToken = `admin-${randomBytes(24).toString('hex')}`;

/** The running Herald: {child, url, metricsUrl, exited, log()}. */
let herald = null;

/** Starts Herald on `bind` ("127.0.0.1:0" the first time, its port again on restart). */
function startHerald(bind) {
  const args = [
    'serve',
    '--bind', bind,
    '--metrics-bind', '127.0.0.1:0',
    '--data-dir', dataDir,
    '--admin-token', adminToken,
    '--socket-buffer', String(SOCKET_BUFFER),
    '--shutdown-timeout-secs', '2',
  ];
  // HERALD_* of the runner's environment would change the server's settings (every flag has one).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const child = spawn(bin, args, { env: { ...env, HERALD_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (chunk) => {
    out = (out + chunk).slice(-64 * 1024);
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', keep);
  child.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`herald did not start within ${READY_TIMEOUT_MS} ms:\n${out}`));
    }, READY_TIMEOUT_MS);
    let url = null;
    let metricsUrl = null;
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      url ??= /herald listening on (http:\/\/\S+)/.exec(out)?.[1] ?? null;
      metricsUrl ??= /herald metrics on (http:\/\/\S+)/.exec(out)?.[1] ?? null;
      if (url && metricsUrl) {
        clearTimeout(timer);
        resolve({ child, url, metricsUrl, exited, log: () => out });
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot spawn ${bin}: ${e.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`herald exited (code ${code}, signal ${signal}) before it was ready:\n${out}`));
    });
  });
}

async function stopHerald() {
  if (!herald) return;
  const { child, exited } = herald;
  herald = null;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve('late'), STOP_TIMEOUT_MS);
  });
  if ((await Promise.race([exited, late])) === 'late') {
    child.kill('SIGKILL');
    await exited;
  }
  clearTimeout(timer);
}

async function call(method, urlPath, bearer, body) {
  if (!herald) throw new Error('herald is not running');
  const res = await fetch(herald.url + urlPath, {
    method,
    headers: { authorization: `Bearer ${bearer}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed };
}

async function expectStatus(what, status, answer) {
  const res = await answer;
  if (res.status !== status) throw new Error(`${what}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

const admin = (method, urlPath, body) => call(method, urlPath, adminToken, body);

async function createKey(project, name, scopes) {
  return expectStatus(
    `create key ${name}`,
    201,
    admin('POST', `/v1/admin/projects/${project}/api-keys`, { name, scopes }),
  );
}

/** The current scenario: project, keys, token mode and how often each channel's token was asked. */
let scenario = null;
let scenarios = 0;

async function newScenario() {
  const project = `conf-${++scenarios}-${randomBytes(4).toString('hex')}`;
  await expectStatus('create project', 201, admin('POST', '/v1/admin/projects', { id: project, name: project }));
  const publisher = await createKey(project, 'publisher', ['publish_event']);
  const signer = await createKey(project, 'signer', ['sign_token']);
  if (scenario) await Promise.all([...scenario.members.values()].flat().map((m) => m.leave()));
  scenario = { project, publisher, signer, mode: 'sign', asked: new Map(), members: new Map() };
  proxy.cut = false;
  if (stream) {
    stream.stop = true;
    await stream.done;
    stream = null;
  }
  return { project, herald: proxy.url };
}

function current() {
  if (!scenario) throw new Error('no scenario: POST /scenario first');
  return scenario;
}

async function sign(channelName, userId = CLIENT_USER, userInfo = CLIENT_INFO) {
  const request = channelName.startsWith('presence-') ? { channelName, userId, userInfo } : { channelName };
  const body = await expectStatus(`sign ${channelName}`, 200, call('POST', '/v1/publishers/sign', current().signer.key, request));
  return body.token;
}

const RS = '\x1e'; // Engine.IO's packet separator on long-polling

/**
 * One member the conductor plays in a presence channel: a Socket.IO client over Engine.IO v4
 * long-polling, with a token naming `userId`. A background loop polls and answers pings;
 * `leave()` closes the Engine.IO session (Herald sees the socket go).
 */
async function joinAsMember(channelName, userId, userInfo) {
  const base = `${herald.url}/socket.io/?EIO=4&transport=polling`;
  const get = async (url) => {
    const res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
    if (!res.ok) throw new Error(`polling GET: HTTP ${res.status}`);
    return (await res.text()).split(RS);
  };
  const [open] = await get(base);
  if (!open.startsWith('0')) throw new Error(`no Engine.IO open: ${open}`);
  const { sid } = JSON.parse(open.slice(1));
  const url = `${base}&sid=${encodeURIComponent(sid)}`;
  const post = async (packet) => {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'text/plain;charset=UTF-8' }, body: packet, signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`polling POST: HTTP ${res.status}`);
    await res.text();
  };
  const member = { closed: false, waiters: [], error: null };
  const next = (pred) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`member ${userId}: no answer within ${EXPECT_TIMEOUT_MS} ms`)), EXPECT_TIMEOUT_MS);
      member.waiters.push({ pred, resolve: (p) => (clearTimeout(timer), resolve(p)) });
    });
  member.loop = (async () => {
    while (!member.closed) {
      let packets;
      try {
        packets = await get(url);
      } catch (e) {
        if (!member.closed) member.error = e;
        return;
      }
      for (const p of packets) {
        if (p === '2') await post('3').catch(() => {});
        if (p === '1') member.closed = true;
        const i = member.waiters.findIndex((w) => w.pred(p));
        if (i >= 0) member.waiters.splice(i, 1)[0].resolve(p);
      }
    }
  })();
  const connected = next((p) => p.startsWith('40') || p.startsWith('44'));
  await post(`40${JSON.stringify({ projectId: current().project })}`);
  const answer = await connected;
  if (!answer.startsWith('40')) throw new Error(`member ${userId}: handshake refused: ${answer}`);
  const authToken = await sign(channelName, userId, userInfo);
  const acked = next((p) => p.startsWith('431['));
  await post(`421${JSON.stringify(['listen', { channelName, authToken }])}`);
  const [ack] = JSON.parse((await acked).slice(3));
  if (ack?.ok !== true) throw new Error(`member ${userId}: listen ${channelName} refused: ${JSON.stringify(ack)}`);
  member.leave = async () => {
    if (member.closed) return;
    member.closed = true;
    await post('1').catch(() => {});
    await member.loop;
  };
  return member;
}

/** member_join: one more socket of `user` in `channel` (a user's first socket makes it a member). */
async function memberJoin(channel, user, info) {
  if (typeof channel !== 'string' || !channel.startsWith('presence-') || typeof user !== 'string') {
    throw new Error('member_join wants {"channel": "presence-…", "user": "…", "info"?: {…}}');
  }
  const member = await joinAsMember(channel, user, info);
  const s = current();
  s.members.set(user, [...(s.members.get(user) ?? []), member]);
  return {};
}

/** member_leave: closes the last socket `user` joined with (its last one makes it leave). */
async function memberLeave(user) {
  const sockets = current().members.get(user) ?? [];
  const member = sockets.pop();
  if (!member) throw new Error(`member_leave: ${user} has no socket`);
  await member.leave();
  return {};
}

async function token(channel) {
  const s = current();
  if (typeof channel !== 'string') throw new Error('POST /token wants {"channel": "private-…"}');
  s.asked.set(channel, (s.asked.get(channel) ?? 0) + 1);
  switch (s.mode) {
    case 'sign':
      return sign(channel);
    case 'wrong_channel':
      return sign(`${channel}-other`);
    case 'garbage':
      return 'not-a-token';
    default:
      throw new Error(`unknown token mode ${s.mode}`);
  }
}

async function publish(channelName, payload) {
  const body = await expectStatus(
    `publish to ${channelName}`,
    200,
    call('POST', '/v1/publishers/events/publish', current().publisher.key, { channelName, payload }),
  );
  return body.id;
}

async function slowConsumers() {
  const res = await fetch(herald.metricsUrl, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith('herald_slow_consumers_total'));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}

/**
 * Publishes large events to `channel` until Herald closed a socket as a slow consumer (its
 * `herald_slow_consumers_total` grew), at most FLOOD_MAX_EVENTS / FLOOD_MAX_MS.
 */
async function flood(channel, bytes) {
  const before = await slowConsumers();
  const filler = 'x'.repeat(Math.max(0, Math.min(bytes, 60_000)));
  const started = Date.now();
  let published = 0;
  for (;;) {
    const batch = [];
    for (let i = 0; i < FLOOD_IN_FLIGHT * 8; i++) {
      batch.push(publish(channel, { flood: published + i, filler }));
    }
    // A batch runs FLOOD_IN_FLIGHT × 8 publishes; fetch keeps a handful of connections busy.
    await Promise.all(batch);
    published += batch.length;
    if ((await slowConsumers()) > before) {
      const ms = Date.now() - started;
      process.stderr.write(`conductor: a slow-consumer close after ${published} events of ${bytes} bytes, ${ms} ms\n`);
      return { published, ms };
    }
    if (published >= FLOOD_MAX_EVENTS || Date.now() - started > FLOOD_MAX_MS) {
      throw new Error(`no slow-consumer close after ${published} events of ${bytes} bytes in ${Date.now() - started} ms`);
    }
  }
}

async function expectTokenRequests(channel, count) {
  const deadline = Date.now() + EXPECT_TIMEOUT_MS;
  for (;;) {
    const asked = current().asked.get(channel) ?? 0;
    if (asked > count) throw new Error(`the token provider was asked ${asked} times for ${channel}, expected ${count}`);
    if (asked === count) return { asked };
    if (Date.now() > deadline) {
      throw new Error(`the token provider was asked ${asked} times for ${channel} within ${EXPECT_TIMEOUT_MS} ms, expected ${count}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The client-facing proxy: its sockets (client side and Herald side), and whether it is cut. */
const proxy = { server: null, pairs: new Set(), cut: false, url: null };

async function startProxy() {
  proxy.server = createTcpServer((client) => {
    if (proxy.cut || !herald) {
      client.destroy();
      return;
    }
    const { hostname, port } = new URL(herald.url);
    const upstream = createConnection({ host: hostname, port: Number(port) });
    const pair = { client, upstream };
    proxy.pairs.add(pair);
    const close = () => {
      proxy.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
  proxy.url = `http://127.0.0.1:${proxy.server.address().port}`;
}

/** Drops every client connection (both sides at once) and refuses new ones until mend(). */
function cut() {
  proxy.cut = true;
  if (stream) stream.whileCut = 0;
  const dropped = proxy.pairs.size;
  for (const { client, upstream } of proxy.pairs) {
    client.destroy();
    upstream.destroy();
  }
  proxy.pairs.clear();
  return { dropped };
}

/** Accepts connections again; with a publish_stream running, once it published CUT_EVENTS while cut. */
async function mend() {
  const until = Date.now() + 5000;
  while (stream && !stream.stop && stream.whileCut < CUT_EVENTS && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 5));
  }
  proxy.cut = false;
  return {};
}

/**
 * A background publisher (publish_stream … stop_stream): one event every STREAM_INTERVAL_MS,
 * so that a client's recovery (after `mend`) races a steady stream. While the client is away
 * (from `cut` until it connected through the proxy again) it publishes at most CUT_EVENTS,
 * then waits. Both bounds keep what reaches a recovering socket at once (the replay, then the
 * live events) below the socket buffer (SOCKET_BUFFER frames); beyond it Herald closes the
 * socket as a slow consumer, and the client's next recovery replays even more (measured:
 * publishing as fast as Herald answers, or on through a client's reconnect backoff, makes
 * every recovery end that way).
 */
const CUT_EVENTS = 4;
const STREAM_INTERVAL_MS = 10;
let stream = null;

function publishStream(channel) {
  if (stream) throw new Error('a publish_stream is already running');
  const state = { channel, published: 0, whileCut: 0, stop: false, error: null };
  state.done = (async () => {
    while (!state.stop) {
      // Away: cut, or mended but the client has not connected through the proxy again yet.
      const away = proxy.cut || proxy.pairs.size === 0;
      if (away && state.whileCut >= CUT_EVENTS) {
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      try {
        if (away) state.whileCut++;
        await publish(channel, { seq: state.published + 1 });
        state.published++;
        await new Promise((r) => setTimeout(r, STREAM_INTERVAL_MS));
      } catch (e) {
        state.error = e;
        return;
      }
    }
  })();
  stream = state;
  return {};
}

/** Stops the stream, then publishes `payload` (the scenario's marker) as the last event. */
async function stopStream(payload) {
  const state = stream;
  if (!state) throw new Error('no publish_stream is running');
  stream = null;
  state.stop = true;
  await state.done;
  if (state.error) throw new Error(`publish_stream failed after ${state.published} events: ${state.error.message}`);
  const id = await publish(state.channel, payload ?? { last: true });
  process.stderr.write(`conductor: publish_stream published ${state.published + 1} events to ${state.channel}, ${state.whileCut} of them while the client was away\n`);
  return { published: state.published + 1, id };
}

async function restart() {
  const bind = new URL(herald.url).host;
  await stopHerald();
  herald = await startHerald(bind);
  return { herald: proxy.url };
}

/** One `server` step of scenarios.json. */
async function step(s) {
  switch (s.server) {
    case 'publish':
      return { id: await publish(s.channel, s.payload) };
    case 'delete_key': {
      const { project, signer } = current();
      await expectStatus('delete key', 204, admin('DELETE', `/v1/admin/projects/${project}/api-keys/${signer.id}`));
      return {};
    }
    case 'restart':
      return restart();
    case 'flood':
      return flood(s.channel, s.bytes ?? 32_768);
    case 'tokens':
      if (!['sign', 'wrong_channel', 'garbage'].includes(s.mode)) throw new Error(`unknown token mode ${s.mode}`);
      current().mode = s.mode;
      return {};
    case 'expect_token_requests':
      return expectTokenRequests(s.channel, s.count);
    case 'history': {
      const { project } = current();
      await expectStatus('set history', 200, admin('PATCH', `/v1/admin/projects/${project}`, { history: s.settings }));
      return {};
    }
    case 'cut':
      return cut();
    case 'mend':
      return mend();
    case 'publish_stream':
      return publishStream(s.channel);
    case 'stop_stream':
      return stopStream(s.payload);
    case 'member_join':
      return memberJoin(s.channel, s.user, s.info);
    case 'member_leave':
      return memberLeave(s.user);
    default:
      throw new Error(`unknown server step ${JSON.stringify(s.server)}`);
  }
}

let held = false;

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      try {
        resolve(body === '' ? {} : JSON.parse(body));
      } catch (e) {
        reject(new Error(`request body is not JSON: ${e.message}`));
      }
    });
    req.on('error', reject);
  });
}

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'GET, POST, OPTIONS',
  'access-control-allow-headers': 'content-type',
};

function send(res, status, body) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    ...CORS,
    'content-type': typeof body === 'string' ? 'text/plain' : 'application/json',
    'cache-control': 'no-store',
  });
  res.end(text);
}

let stopping = null;

async function shutdown(code) {
  stopping ??= (async () => {
    await stopHerald().catch(() => {});
    rmSync(dataDir, { recursive: true, force: true });
    control.close();
    proxy.server?.close();
    process.exit(code);
  })();
  return stopping;
}

const control = createServer(async (req, res) => {
  try {
    if (req.method === 'OPTIONS') return send(res, 204, '');
    const route = `${req.method} ${new URL(req.url, 'http://x').pathname}`;
    switch (route) {
      case 'GET /hold':
        return send(res, 200, held ? 'held' : 'released');
      case 'POST /hold':
        held = true;
        return send(res, 200, { ok: true });
      case 'POST /release':
        held = false;
        return send(res, 200, { ok: true });
      case 'POST /scenario':
        held = false;
        return send(res, 200, { ok: true, ...(await newScenario()) });
      case 'POST /token': {
        const { channel } = await readJson(req);
        try {
          return send(res, 200, { token: await token(channel) });
        } catch (e) {
          return send(res, 502, { error: e.message });
        }
      }
      case 'POST /step': {
        const s = await readJson(req);
        try {
          return send(res, 200, { ok: true, ...(await step(s)) });
        } catch (e) {
          return send(res, 422, { ok: false, error: e.message });
        }
      }
      case 'POST /stop':
        send(res, 200, { ok: true });
        return shutdown(0);
      default:
        return send(res, 404, { error: `no route ${route}` });
    }
  } catch (e) {
    return send(res, 500, { error: e.message });
  }
});

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
// The runner holds our stdin: when it ends (the runner exited or died), so do we.
process.stdin.on('end', () => shutdown(0));
process.stdin.on('error', () => shutdown(0));
process.stdin.resume();

try {
  herald = await startHerald('127.0.0.1:0');
  await startProxy();
  const { project } = await newScenario();
  await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve));
  const line = { control: `http://127.0.0.1:${control.address().port}`, herald: proxy.url, project, pid: process.pid };
  process.stdout.write(`${JSON.stringify(line)}\n`);
} catch (e) {
  process.stderr.write(`conductor: ${e.stack ?? e}\n`);
  await shutdown(1);
}
