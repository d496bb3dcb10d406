// @herald/client in Node against the real server: the packed npm tarball is installed into a
// temporary app (node_modules/@herald/client, plus ws), and node-app/app.mjs runs there as a
// child process, so each case gets Node's own globals (with or without WebSocket) and imports
// the package by name, through its `exports` (the "node" condition): events on a public and a
// private channel with ws and with the global WebSocket, a reconnection after a server restart,
// the error without any WebSocket. Also: node-app/typed-payloads.ts compiles with
// `tsc --strict --noEmit` against the package's declarations.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import { createKey, createProject, freePort, publish, startHerald, uid } from '../js/harness.mjs';
import { startHeraldAt, unpackTarball } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const T = { timeout: 30_000 };
const nodeMajor = Number(process.versions.node.split('.')[0]);

let herald;
let pkgDir;
let app;

before(async () => {
  pkgDir = unpackTarball();
  app = mkdtempSync(path.join(tmpdir(), 'herald-node-app-'));
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  const scope = path.join(app, 'node_modules', '@herald');
  mkdirSync(scope, { recursive: true });
  cpSync(pkgDir, path.join(scope, 'client'), { recursive: true });
  symlinkSync(path.join(here, 'node_modules', 'ws'), path.join(app, 'node_modules', 'ws'), 'dir');
  cpSync(path.join(here, 'node-app'), app, { recursive: true });
  herald = await startHerald();
});

after(async () => {
  await herald?.stop();
  if (app) rmSync(app, { recursive: true, force: true });
  if (pkgDir) rmSync(path.dirname(pkgDir), { recursive: true, force: true });
});

/**
 * Starts app.mjs with `env` and `nodeArgs`. Returns `{ lines, waitFor, exited, output }`: the
 * JSON lines printed so far, `waitFor(predicate, what)` resolving with the first line (index
 * and all lines passed too) that matches, failing if the app exits first, and `exited`
 * resolving with the exit code.
 */
function startApp(env, { nodeArgs = [] } = {}) {
  const child = spawn(process.execPath, [...nodeArgs, 'app.mjs'], {
    cwd: app,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  process.once('exit', () => child.kill('SIGKILL'));
  const lines = [];
  const waiters = new Set();
  let stderr = '';
  child.stderr.on('data', (c) => {
    stderr += c;
  });
  const output = () => `stdout:\n${lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${stderr}`;
  const check = () => {
    for (const w of waiters) {
      const i = lines.findIndex((l, i) => w.predicate(l, i, lines));
      if (i >= 0) {
        waiters.delete(w);
        w.resolve(lines[i]);
      }
    }
  };
  createInterface({ input: child.stdout }).on('line', (line) => {
    try {
      lines.push(JSON.parse(line));
    } catch {
      lines.push({ text: line });
    }
    check();
  });
  const exited = new Promise((resolve) => {
    child.once('close', (code) => {
      for (const w of waiters) w.reject(new Error(`the app exited (${code}) before ${w.what}:\n${output()}`));
      waiters.clear();
      resolve(code);
    });
  });
  const waitFor = (predicate, what) =>
    new Promise((resolve, reject) => {
      waiters.add({ predicate, what, resolve, reject });
      check();
    });
  return { lines, waitFor, exited, output };
}

/** A project with a publish key and a sign key (`sign_token`, for the app's `authorize`). */
async function projectWithKeys(h) {
  const project = uid('node');
  await createProject(h, project);
  const { key } = await createKey(h, project, ['publish_event']);
  const signer = await createKey(h, project, ['sign_token']);
  return { project, key, signKey: signer.key };
}

/** Publishes to each channel; checks each is answered 200; returns the published ids by channel. */
async function publishEach(h, key, payloads) {
  const ids = {};
  for (const [channel, payload] of Object.entries(payloads)) {
    const res = await publish(h, key, channel, payload);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    ids[channel] = res.body.id;
  }
  return ids;
}

/** The events the app printed, by channel (the last one of each). */
const eventsByChannel = (lines) => Object.fromEntries(lines.filter((l) => l.event).map((l) => [l.event.channelName, l.event]));

/**
 * The app listens to a public and a private channel; once it says it is ready, one event is
 * published to each. Checks it receives both, never fetched the wasm, and exits by itself
 * after close(). Returns its lines.
 */
async function receivesPublicAndPrivate(mode, nodeArgs) {
  const { project, key, signKey } = await projectWithKeys(herald);
  const publicChannel = `orders-${mode}`;
  const privateChannel = `private-user-${mode}`;
  const run = startApp(
    { MODE: mode, HERALD_URL: herald.url, PROJECT: project, SIGN_KEY: signKey, CHANNELS: `${publicChannel},${privateChannel}` },
    { nodeArgs },
  );
  const ready = await run.waitFor((l) => l.ready, 'listening');
  assert.deepEqual(ready.ready, [publicChannel, privateChannel].sort(), run.output());
  const payloads = { [publicChannel]: { n: 1, mode }, [privateChannel]: { n: 2, secret: true } };
  const ids = await publishEach(herald, key, payloads);
  const code = await run.exited;
  assert.equal(code, 0, run.output());
  const events = eventsByChannel(run.lines);
  for (const [channel, payload] of Object.entries(payloads)) {
    assert.deepEqual(events[channel]?.payload, payload, run.output());
    assert.equal(events[channel].id, ids[channel], run.output());
  }
  assert.deepEqual(run.lines.find((l) => l.parsed)?.parsed, { name: 'private-x', private: true }, run.output());
  const done = run.lines.find((l) => l.done);
  assert.ok(done, `the app ends by itself after close():\n${run.output()}`);
  assert.deepEqual(
    done.fetched.filter((url) => !url.endsWith('/v1/publishers/sign')),
    [],
    'the WebAssembly module is read from disk, not fetched',
  );
  if (mode === 'global') {
    // (With ws, its own close-handshake timer may still run: ws clears it once the server's
    // close frame arrives.)
    assert.deepEqual(done.timers, [], 'no timer of the client outlives close() (it would keep Node running)');
  }
  const states = run.lines.filter((l) => l.state).map((l) => l.state);
  assert.deepEqual(states, ['connecting', 'connected', 'closed'], run.output());
  return run.lines;
}

describe('@herald/client in Node', () => {
  it(`Node ${nodeMajor} with the ws package passed as options.WebSocket: public and private events`, T, async () => {
    await receivesPublicAndPrivate('ws');
  });

  it('with the global WebSocket (Node 22+; Node 20 with --experimental-websocket): public and private events', T, async () => {
    const nodeArgs = nodeMajor < 22 ? ['--experimental-websocket'] : [];
    const lines = await receivesPublicAndPrivate('global', nodeArgs);
    assert.equal(lines.find((l) => l.globalWebSocket)?.globalWebSocket, 'function');
  });

  it('with ws: reconnects after a server restart (same port and data dir) and receives again', T, async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-node-restart-'));
    const bind = `127.0.0.1:${await freePort()}`;
    let h = await startHeraldAt(bind, dataDir);
    try {
      const { project, key, signKey } = await projectWithKeys(h);
      const channels = ['orders-restart', 'private-user-restart'];
      const run = startApp({
        MODE: 'ws',
        FAST: '1',
        HERALD_URL: h.url,
        PROJECT: project,
        SIGN_KEY: signKey,
        CHANNELS: channels.join(','),
        EVENTS: '4',
      });
      await run.waitFor((l) => l.ready, 'listening');
      await publishEach(h, key, { [channels[0]]: { before: 1 }, [channels[1]]: { before: 2 } });
      await run.waitFor((l, i, all) => all.slice(0, i + 1).filter((e) => e.event).length === 2, 'the first two events');

      await h.stop();
      await run.waitFor((l) => l.state === 'reconnecting', 'reconnecting');
      h = await startHeraldAt(bind, dataDir);
      // `connected` again only once every channel is listened to again.
      await run.waitFor((l, i, all) => l.state === 'connected' && all.slice(0, i).some((e) => e.state === 'reconnecting'), 'connected again');
      await publishEach(h, key, { [channels[0]]: { after: 1 }, [channels[1]]: { after: 2 } });

      assert.equal(await run.exited, 0, run.output());
      const events = run.lines.filter((l) => l.event).map((l) => [l.event.channelName, l.event.payload]);
      assert.deepEqual(
        events.slice(2).sort(),
        [
          [channels[0], { after: 1 }],
          [channels[1], { after: 2 }],
        ],
        run.output(),
      );
      const asked = run.lines.filter((l) => l.authorize).map((l) => l.authorize);
      assert.deepEqual(asked, [channels[1], channels[1]], 'authorize is asked again on reconnection');
    } finally {
      await h.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('without a WebSocket, the constructor says what to pass', T, async () => {
    const run = startApp({ MODE: 'none', HERALD_URL: herald.url, PROJECT: 'acme' });
    assert.equal(await run.exited, 0, run.output());
    const error = run.lines.find((l) => l.error)?.error;
    assert.ok(error, run.output());
    assert.equal(error.name, 'HeraldError');
    assert.equal(error.code, 'invalid_options');
    assert.match(error.message, /no WebSocket/);
    assert.match(error.message, /import \{ WebSocket \} from 'ws'/);
    assert.match(error.message, /new HeraldClient\(url, \{ projectId, WebSocket \}\)/);
  });

  it('a typed payload handler compiles with tsc --strict --noEmit', { timeout: 60_000 }, () => {
    const tsc = path.join(here, 'node_modules', 'typescript', 'bin', 'tsc');
    writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          lib: ['ES2022', 'DOM'],
          skipLibCheck: false,
          types: [],
        },
        files: ['typed-payloads.ts'],
      }),
    );
    try {
      execFileSync(process.execPath, [tsc, '-p', app, '--strict', '--noEmit'], { cwd: app, encoding: 'utf8' });
    } catch (e) {
      assert.fail(`tsc --strict --noEmit failed:\n${e.stdout}${e.stderr}`);
    }
  });
});

