// Test harness for Herald's end-to-end tests: starts the real server binary and offers small
// helpers around the admin/publisher REST API and socket.io-client.
//
// The binary is `$HERALD_BIN`, or `<repo>/target/debug/herald` (build it with
// `cargo build -p herald-server`).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { io } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (this file lives in `<repo>/tests/js`). */
export const repoRoot = path.resolve(here, '..', '..');
/** The server binary the tests run. */
export const heraldBin = process.env.HERALD_BIN ?? path.join(repoRoot, 'target', 'debug', 'herald');

const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 5_000;
// Large enough to keep a whole test file's logs: they are searched for leaked secrets.
const LOG_LIMIT = 32 * 1024 * 1024;
const READY_LINE = /herald listening on (http:\/\/127\.0\.0\.1:\d+)/;

// Servers still running when the test process exits are killed, so a failing test never leaks
// a background process.
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * Every secret the tests created or received (admin tokens, API keys, channel tokens). A
 * server's logs are checked against them when it stops: a secret in a log line fails the run.
 */
export const secrets = new Set();

function assertNoSecretsIn(logs) {
  for (const secret of secrets) {
    if (secret && logs.includes(secret)) {
      throw new Error(`a secret (${secret.slice(0, 6)}…) appears in the server's logs`);
    }
  }
}


/** A free TCP port on 127.0.0.1 (closed again before it is returned). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}
/** A fresh, random value usable as a project id or channel suffix: `prefix-<hex>`. */
export function uid(prefix = 't') {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/**
 * Starts `herald serve` on an ephemeral port of 127.0.0.1.
 *
 * @param {object} [options]
 * @param {string[]} [options.extraArgs] more CLI arguments, e.g. `['--max-channels-per-socket', '3']`
 * @param {Record<string, string>} [options.env] environment added to the test's own
 * @param {string} [options.dataDir] data directory; a fresh temporary one (removed on stop) when absent
 * @returns {Promise<Herald>}
 */
export async function startHerald({ extraArgs = [], env = {}, dataDir } = {}) {
  if (!existsSync(heraldBin)) {
    throw new Error(
      `Herald binary not found at ${heraldBin}: run \`cargo build -p herald-server\` or set HERALD_BIN`,
    );
  }
  const ownDataDir = dataDir === undefined;
  const dir = dataDir ?? mkdtempSync(path.join(tmpdir(), 'herald-e2e-'));
  const adminToken = `admin-${randomBytes(24).toString('hex')}`;
  secrets.add(adminToken);
  const args = [
    'serve',
    '--bind',
    '127.0.0.1:0',
    '--data-dir',
    dir,
    '--admin-token',
    adminToken,
    // Herald's drain bound (default 10 s) within the 5 s `stop()` allows: a long-poll request
    // a client abandoned without closing its TCP connection must not outlast the test.
    '--shutdown-timeout-secs',
    '2',
    ...extraArgs,
  ];
  // HERALD_* variables of the test's own environment would silently change the server's
  // settings (every flag has one), so only those passed in `env` reach it.
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('HERALD_')),
  );
  const child = spawn(heraldBin, args, {
    // Debug logs for Herald itself, so the secret check sees every line Herald can write.
    env: { RUST_BACKTRACE: '1', HERALD_LOG: 'info,herald_server=debug', ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);

  let stdout = '';
  let stderr = '';
  const append = (buf, chunk) => {
    const next = buf + chunk;
    return next.length > LOG_LIMIT ? next.slice(next.length - LOG_LIMIT) : next;
  };
  // Both pipes are drained for the server's whole life, so a chatty server never blocks on a
  // full pipe.
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = append(stderr, chunk);
  });

  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  let exitStatus = null;
  exited.then((status) => {
    exitStatus = status;
  });

  const url = await new Promise((resolve, reject) => {
    let done = false;
    const finish = (fn, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      fn(value);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(
        reject,
        new Error(
          `herald did not print "herald listening on http://..." within ${READY_TIMEOUT_MS} ms\n` +
            `args: ${args.join(' ')}\nstdout:\n${stdout}\nstderr:\n${stderr}`,
        ),
      );
    }, READY_TIMEOUT_MS);
    child.stdout.on('data', (chunk) => {
      stdout = append(stdout, chunk);
      const m = READY_LINE.exec(stdout);
      if (m) finish(resolve, m[1]);
    });
    child.once('error', (err) => finish(reject, new Error(`cannot spawn ${heraldBin}: ${err.message}`)));
    exited.then(({ code, signal }) =>
      finish(
        reject,
        new Error(
          `herald exited before it was ready (code ${code}, signal ${signal})\n` +
            `args: ${args.join(' ')}\nstdout:\n${stdout}\nstderr:\n${stderr}`,
        ),
      ),
    );
  });

  /** Sockets opened through `connect(h, ...)`, closed by `stop()`. */
  const sockets = new Set();

  const closeSockets = () => {
    for (const s of sockets) s.disconnect();
    sockets.clear();
  };

  const cleanup = () => {
    if (ownDataDir) rmSync(dir, { recursive: true, force: true });
  };

  return {
    url,
    adminToken,
    dataDir: dir,
    pid: child.pid,
    sockets,
    /** stdout and stderr captured so far. */
    logs: () => `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
    /** Whether the process has exited (and how). `null` while it runs. */
    exitStatus: () => exitStatus,
    /**
     * Closes the client sockets opened through `connect`, sends SIGTERM and waits for the exit.
     * Rejects (after a SIGKILL) when the server does not stop within 5 s.
     */
    async stop() {
      closeSockets();
      if (exitStatus === null) {
        child.kill('SIGTERM');
        let timer;
        const timedOut = new Promise((resolve) => {
          timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
        });
        const result = await Promise.race([exited, timedOut]);
        clearTimeout(timer);
        if (result === 'timeout') {
          child.kill('SIGKILL');
          await exited;
          cleanup();
          throw new Error(`herald did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`);
        }
      }
      cleanup();
      assertNoSecretsIn(stderr + stdout);
      return exitStatus;
    },
    /** SIGKILL, then wait for the exit. */
    async kill() {
      closeSockets();
      if (exitStatus === null) child.kill('SIGKILL');
      const status = await exited;
      cleanup();
      return status;
    },
  };
}

/** Parses a response body: JSON when it is JSON, the text otherwise, `undefined` when empty. */
async function readBody(res) {
  const text = await res.text();
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * A plain HTTP request to the server. `body` objects are sent as JSON.
 * @returns {Promise<{status: number, headers: Headers, body: any}>}
 */
export async function request(h, method, urlPath, { headers = {}, body } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(10_000) };
  if (body !== undefined) {
    init.headers['content-type'] ??= 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(h.url + urlPath, init);
  const parsed = await readBody(res);
  if (parsed && typeof parsed === 'object') {
    if (typeof parsed.key === 'string') secrets.add(parsed.key);
    if (typeof parsed.token === 'string') secrets.add(parsed.token);
    if (typeof parsed.secret === 'string') secrets.add(parsed.secret);
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

/** An admin API call with the server's admin token. */
export async function admin(h, method, urlPath, body) {
  const { status, body: resBody } = await request(h, method, urlPath, {
    headers: { authorization: `Bearer ${h.adminToken}` },
    body,
  });
  return { status, body: resBody };
}

function expectStatus(what, res, expected) {
  if (res.status !== expected) {
    throw new Error(`${what}: expected HTTP ${expected}, got ${res.status}: ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

/** Creates project `id` (name = id); throws unless 201. Returns the project body. */
export async function createProject(h, id, name = id) {
  return expectStatus(
    `create project ${id}`,
    await admin(h, 'POST', '/v1/admin/projects', { id, name }),
    201,
  );
}

/**
 * Creates an API key in `projectId`; throws unless 201. Returns the created key body, whose
 * `.key` is the full key string.
 */
export async function createKey(h, projectId, scopes = ['publish_event'], expiresAt) {
  const body = { name: `key-${randomBytes(3).toString('hex')}`, scopes };
  if (expiresAt !== undefined) body.expiresAt = expiresAt;
  return expectStatus(
    `create API key in ${projectId}`,
    await admin(h, 'POST', `/v1/admin/projects/${projectId}/api-keys`, body),
    201,
  );
}

/**
 * Publishes `payload` to `channelName` with API key `key`.
 * `opts.header = 'x-api-key'` sends the key as `X-API-Key` instead of `Authorization: Bearer`;
 * `opts.extra` merges more fields into the body.
 * @returns {Promise<{status: number, body: any}>}
 */
export async function publish(h, key, channelName, payload, { header = 'bearer', extra = {} } = {}) {
  const headers = header === 'x-api-key' ? { 'x-api-key': key } : { authorization: `Bearer ${key}` };
  const { status, body } = await request(h, 'POST', '/v1/publishers/events/publish', {
    headers,
    body: { channelName, payload, ...extra },
  });
  return { status, body };
}

/** Publishes and returns the answer body, throwing unless 200. */
export async function published(h, key, channelName, payload) {
  const res = await publish(h, key, channelName, payload);
  if (res.status !== 200) throw new Error(`publish to ${channelName}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/**
 * Signs a private-channel token with API key `key` (scope `sign_token`); throws unless 200.
 * Returns `{ token, expiresAt }`.
 */
export async function sign(h, key, channelName) {
  const res = await request(h, 'POST', '/v1/publishers/sign', {
    headers: { authorization: `Bearer ${key}` },
    body: { channelName },
  });
  if (res.status !== 200) throw new Error(`sign ${channelName}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Like `sign`, returning only the token. */
export async function signToken(h, key, channelName) {
  return (await sign(h, key, channelName)).token;
}

/**
 * Transports `connect` uses unless a test says otherwise: `HERALD_TEST_TRANSPORTS`
 * (comma-separated), by default WebSocket only, which Herald serves on its direct transport.
 * `polling,websocket` (socket.io-client's own default) runs a suite over socketioxide's
 * long-polling and upgrade path instead.
 */
export const defaultTransports = (process.env.HERALD_TEST_TRANSPORTS ?? 'websocket').split(',');

/**
 * Opens a Socket.IO connection to project `projectId` (no `auth` at all when it is
 * `undefined`; `opts.auth` overrides). Resolves with the connected socket, or rejects with the
 * `connect_error`.
 */
export function connect(h, projectId, opts = {}) {
  const { timeoutMs = 10_000, ...ioOpts } = opts;
  const socket = io(h.url, {
    transports: defaultTransports,
    forceNew: true,
    reconnection: false,
    timeout: timeoutMs,
    ...(projectId === undefined ? {} : { auth: { projectId } }),
    ...ioOpts,
  });
  h.sockets?.add(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      socket.disconnect();
      h.sockets?.delete(socket);
      reject(new Error(`socket did not connect within ${timeoutMs} ms`));
    }, timeoutMs + 1_000);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      socket.disconnect();
      h.sockets?.delete(socket);
      reject(err);
    };
    function cleanup() {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    }
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/**
 * Emits `listen` and resolves with its ack (rejects when no ack comes within 5 s). A
 * successful ack also carries the channel's position when the project keeps history (the
 * default): `{ ok: true, epoch, offset }`; it is checked here and left out of the answer, so
 * tests compare `{ ok: true }` (tests/js/history.test.mjs asserts the position itself).
 */
export async function listen(socket, channelName, authToken) {
  const body = { channelName };
  if (authToken !== undefined) body.authToken = authToken;
  const ack = await socket.timeout(5000).emitWithAck('listen', body);
  if (ack?.ok === true && ('epoch' in ack || 'offset' in ack)) {
    const { epoch, offset, ...rest } = ack;
    if (typeof epoch !== 'string' || !Number.isInteger(offset) || offset < 0) {
      throw new Error(`listen ${channelName}: malformed position in ${JSON.stringify(ack)}`);
    }
    return rest;
  }
  return ack;
}

/** Emits `remove` and resolves with its ack. */
export function remove(socket, channelName) {
  return socket.timeout(5000).emitWithAck('remove', { channelName });
}

/**
 * Resolves with the first argument of the next `name` event on `socket`; rejects after
 * `timeoutMs`. Call it *before* the action that triggers the event.
 */
export function nextEvent(socket, name, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const handler = (arg) => {
      clearTimeout(timer);
      resolve(arg);
    };
    const timer = setTimeout(() => {
      socket.off(name, handler);
      reject(new Error(`no "${name}" event within ${timeoutMs} ms (socket ${socket.id ?? '?'})`));
    }, timeoutMs);
    socket.once(name, handler);
  });
}

/**
 * Records every `name` event on `socket` (first argument of each) into the returned array;
 * `arr.stop()` detaches the listener.
 */
export function collectEvents(socket, name) {
  const events = [];
  const handler = (arg) => events.push(arg);
  socket.on(name, handler);
  events.stop = () => socket.off(name, handler);
  return events;
}

/** Resolves after `ms` when no `name` event arrived on `socket` meanwhile; rejects otherwise. */
export function expectNoEvent(socket, name, ms = 500) {
  return new Promise((resolve, reject) => {
    const handler = (arg) => {
      clearTimeout(timer);
      reject(new Error(`unexpected "${name}" event: ${JSON.stringify(arg)}`));
    };
    const timer = setTimeout(() => {
      socket.off(name, handler);
      resolve();
    }, ms);
    socket.once(name, handler);
  });
}

/** Resolves when `predicate()` (sync or async) holds, polling every 20 ms; rejects after `timeoutMs`. */
export async function waitFor(predicate, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
