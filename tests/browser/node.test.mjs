// @herald/client in Node against the real server: the packed npm tarball is installed into a
// temporary app (node_modules/@herald/client, plus ws), and node-app/app.mjs runs there as a
// child process, so each case gets Node's own globals (with or without WebSocket) and imports
// the package by name, through its `exports` (the "node" condition). Also: node-app/
// typed-payloads.ts compiles with `tsc --strict --noEmit` against the package's declarations.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import { createKey, createProject, publish, startHerald, uid } from '../js/harness.mjs';
import { unpackTarball } from './lib.mjs';

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
 * Runs app.mjs with `env` and `nodeArgs`; `onLine(message, lines)` sees each JSON line as it
 * comes. Resolves with `{ code, lines, stderr }` when the process exits.
 */
function runApp(env, { nodeArgs = [], onLine = () => {} } = {}) {
  const child = spawn(process.execPath, [...nodeArgs, 'app.mjs'], {
    cwd: app,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  let stderr = '';
  child.stderr.on('data', (c) => {
    stderr += c;
  });
  createInterface({ input: child.stdout }).on('line', (line) => {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      message = { text: line };
    }
    lines.push(message);
    onLine(message, lines);
  });
  return new Promise((resolve) => {
    child.once('close', (code) => resolve({ code, lines, stderr }));
  });
}

/**
 * A project with a publish key and a sign key; the app listens to a public and a private
 * channel, and once it says it is ready this publishes one event to each. Returns what the
 * app printed, after checking it exited 0 having received both events.
 */
async function receivesPublicAndPrivate(mode, nodeArgs) {
  const project = uid('node');
  await createProject(herald, project);
  const { key } = await createKey(herald, project, ['publish_event']);
  const signer = await createKey(herald, project, ['sign_token']);
  const publicChannel = `orders-${mode}`;
  const privateChannel = `private-user-${mode}`;
  const published = [];
  const run = await runApp(
    {
      MODE: mode,
      HERALD_URL: herald.url,
      PROJECT: project,
      SIGN_KEY: signer.key,
      CHANNELS: `${publicChannel},${privateChannel}`,
    },
    {
      nodeArgs,
      onLine: (message) => {
        if (!message.ready) return;
        published.push(
          publish(herald, key, publicChannel, { n: 1, mode }),
          publish(herald, key, privateChannel, { n: 2, secret: true }),
        );
      },
    },
  );
  const results = await Promise.all(published);
  const output = `exit ${run.code}\nstdout:\n${run.lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${run.stderr}`;
  assert.equal(run.code, 0, output);
  assert.deepEqual(results.map((r) => r.status), [200, 200], output);
  const ready = run.lines.find((l) => l.ready);
  assert.deepEqual(ready?.ready, [publicChannel, privateChannel].sort(), output);
  const events = run.lines.filter((l) => l.event).map((l) => l.event);
  const byChannel = Object.fromEntries(events.map((e) => [e.channelName, e]));
  assert.deepEqual(byChannel[publicChannel]?.payload, { n: 1, mode }, output);
  assert.deepEqual(byChannel[privateChannel]?.payload, { n: 2, secret: true }, output);
  assert.equal(byChannel[publicChannel].id, results[0].body.id, output);
  assert.deepEqual(run.lines.find((l) => l.parsed)?.parsed, { name: 'private-x', private: true }, output);
  const done = run.lines.find((l) => l.done);
  assert.ok(done, `the app ends by itself after close():\n${output}`);
  assert.deepEqual(
    done.fetched.filter((url) => !url.endsWith('/v1/publishers/sign')),
    [],
    'the WebAssembly module is read from disk, not fetched',
  );
  assert.ok(run.lines.some((l) => l.state === 'connected'), output);
  assert.equal(run.lines.at(-2)?.state ?? run.lines.find((l) => l.state === 'closed')?.state, 'closed', output);
  return run;
}

describe('@herald/client in Node', () => {
  it(`Node ${nodeMajor} with the ws package passed as options.WebSocket: public and private events`, T, async () => {
    await receivesPublicAndPrivate('ws');
  });

  it('with the global WebSocket (Node 22+; Node 20 with --experimental-websocket): public and private events', T, async () => {
    const nodeArgs = nodeMajor < 22 ? ['--experimental-websocket'] : [];
    const run = await receivesPublicAndPrivate('global', nodeArgs);
    assert.equal(run.lines.find((l) => l.globalWebSocket)?.globalWebSocket, 'function');
  });

  it('without a WebSocket, the constructor says what to pass', T, async () => {
    const run = await runApp({ MODE: 'none', HERALD_URL: herald.url, PROJECT: 'acme' });
    const output = `stdout:\n${run.lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr:\n${run.stderr}`;
    assert.equal(run.code, 0, output);
    const error = run.lines.find((l) => l.error)?.error;
    assert.ok(error, output);
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
