// Helpers of the browser tests: headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no browser is ever downloaded), a static server for the packed
// @herald/client tarball and a test page, and a Herald started on a fixed address (restarts).
//
// Herald itself comes from ../js/harness.mjs (startHerald, createProject, createKey, publish):
// that file imports socket.io-client, so `npm ci` must have run in tests/js too.

import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { heraldBin, repoRoot, request } from '../js/harness.mjs';

export const CHROMIUM = process.env.HERALD_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The @herald/client tarball: `$HERALD_CLIENT_TGZ`, else the newest `target/npm/herald-client-*.tgz`. */
export function findTarball() {
  if (process.env.HERALD_CLIENT_TGZ) return process.env.HERALD_CLIENT_TGZ;
  const dir = path.join(repoRoot, 'target', 'npm');
  const found = existsSync(dir)
    ? readdirSync(dir)
        .filter((f) => /^herald-client-.*\.tgz$/.test(f))
        .map((f) => path.join(dir, f))
        .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)
    : [];
  if (found.length === 0) {
    throw new Error('no @herald/client tarball in target/npm: run `sdk-wasm/build.sh --pack target/npm` (scripts/test does)');
  }
  return found[0];
}

/** Extracts the tarball into a fresh directory; returns the package's directory. */
export function unpackTarball(tarball = findTarball()) {
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-client-'));
  execFileSync('tar', ['-xzf', tarball, '-C', dir]);
  return path.join(dir, 'package');
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.ts': 'text/plain; charset=utf-8',
};

// The test page: loads the package as a web app would (an ES module import) and records what
// every client emits, so the tests read it with page.evaluate.
const TEST_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>herald browser tests</title>
<script type="module">
import * as herald from '/pkg/index.js';
const plain = (value) =>
  value === undefined ? undefined :
  JSON.parse(JSON.stringify(value, (_k, v) => v instanceof Error ? { name: v.name, code: v.code, message: v.message } : v));
window.logs = {};
window.clients = {};
window.herald = herald;
// authorize: 'sign' (a real token, signed by the test through POST /v1/publishers/sign),
// 'garbage' (a string that is no JWT) or 'throw'.
window.makeClient = (id, url, options, { authorize } = {}) => {
  const log = (window.logs[id] = []);
  const opts = { ...options };
  if (authorize) {
    opts.authorize = async (channelName) => {
      log.push({ kind: 'authorize', a: channelName });
      if (authorize === 'garbage') return 'not-a-token';
      if (authorize === 'throw') throw new Error('backend said no');
      return window.signToken(channelName);
    };
  }
  const client = new herald.HeraldClient(url, opts);
  for (const kind of ['event', 'system_message', 'state', 'recovery', 'relisten_failed', 'presence', 'presence_synced']) {
    client.on(kind, (a, b) => log.push({ kind, a: plain(a), b: plain(b) }));
  }
  window.clients[id] = client;
};
window.call = async (id, method, ...args) => {
  try {
    await window.clients[id][method](...args);
    return { ok: true };
  } catch (error) {
    return { ok: false, error: plain(error) };
  }
};
window.heraldReady = herald.initHerald().then(() => true);
</script>
`;

/**
 * Serves `/` (the test page) and `/pkg/*` (the unpacked package) on 127.0.0.1: the web app's
 * origin, which differs from Herald's (cross-origin, as in production).
 */
export async function servePackage(pkgDir) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': TYPES['.html'] });
      return res.end(TEST_PAGE);
    }
    const rel = url.pathname.startsWith('/pkg/') ? url.pathname.slice('/pkg/'.length) : null;
    const file = rel && path.join(pkgDir, rel);
    if (!file || !file.startsWith(pkgDir + path.sep) || !existsSync(file)) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Headless Chromium with a fresh profile. `close()` also removes the profile. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does)`);
  }
  const profile = mkdtempSync(path.join(tmpdir(), 'herald-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 800 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * A page on the test origin with the package loaded. `errors` collects uncaught page errors
 * and console errors, to print when a test fails.
 */
export async function openTestPage(context, origin) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.heraldReady);
  await page.evaluate(() => window.heraldReady);
  return { page, errors };
}

/** The log of client `id` in the page. */
export function logOf(page, id) {
  return page.evaluate((id) => window.logs[id] ?? [], id);
}

/** Waits until an entry of client `id`'s log satisfies `predicate`; returns it. */
export async function waitForLog(page, id, predicate, timeoutMs = 5000, what = 'log entry') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const log = await logOf(page, id);
    const hit = log.find(predicate);
    if (hit) return hit;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; log of ${id}:\n${JSON.stringify(log, null, 1)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `POST /v1/publishers/sign` with a `sign_token` key; returns the token. */
export async function signToken(h, key, channelName) {
  const res = await request(h, 'POST', '/v1/publishers/sign', {
    headers: { authorization: `Bearer ${key}` },
    body: { channelName },
  });
  if (res.status !== 200) throw new Error(`sign ${channelName}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.token;
}

/**
 * Starts `herald serve` on a fixed address (`host:port`) with `dataDir` (kept), for restart
 * tests: ../js/harness.mjs always binds port 0. Resolves with `{ url, stop() }`.
 */
export async function startHeraldAt(bind, dataDir) {
  const adminToken = `admin-${randomBytes(16).toString('hex')}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const child = spawn(heraldBin, ['serve', '--bind', bind, '--data-dir', dataDir, '--admin-token', adminToken], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stderr.on('data', (c) => {
    out = (out + c).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start on ${bind}:\n${out}`)), 20_000);
    child.stdout.on('data', (c) => {
      out += c;
      const m = /herald listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`herald exited (${code}) before listening on ${bind}:\n${out}`));
    });
  });
  process.once('exit', () => child.kill('SIGKILL'));
  return {
    url,
    adminToken,
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
