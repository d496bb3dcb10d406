// The README's quick start, run as written: every fenced block of README.md that follows a
// `<!-- quickstart:NAME -->` comment is taken from the README (nothing is re-stated here) and run
// the way the README tells a person to run it, in a fresh temporary directory:
//
// * "terminal 1" and "terminal 2" are real bash processes (`set -eo pipefail`, so a failing
//   command fails the test) fed the blocks on stdin, so `cd`, `export` and background jobs carry
//   from one block to the next as they do in a terminal;
// * `herald` on their PATH is the binary the other tests drive (`$HERALD_BIN`, by default
//   `target/debug/herald`, linked into a directory put first on PATH) instead of the
//   `cargo install` of the README's Install section;
// * `npm install socket.io-client@4` is answered by a small `npm` wrapper first on PATH that
//   links `tests/js/node_modules` (the real socket.io-client 4 the other tests use, checked
//   below) instead of downloading it; every other npm command (`npm init -y`) is the real npm;
// * the server is told its port through `HERALD_BIND` and the CLI and client through
//   `HERALD_URL` (the README's commands read both; 8080 may be taken on a test machine).
//
// The scenario: server, project and key, `herald sign`, the client snippet (`client.mjs`) with
// its set-up step, publish to a public and a private channel, then a forced reconnect (the
// server stopped with SIGINT, as Ctrl-C does, and started again by the same block): the client
// must listen again by itself and receive what is published after it.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  accessSync,
  chmodSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { freePort, heraldBin, repoRoot } from './harness.mjs';

const WAIT_MS = 60_000;

/** The quick-start blocks of README.md by name: `{ lang, info, body }`. */
function quickstartBlocks() {
  const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const blocks = new Map();
  const re = /<!-- quickstart:(\S+)(?: ([^>]*?))? -->\s*\n```(\w+)\n([\s\S]*?)\n```/g;
  for (const m of readme.matchAll(re)) {
    assert.ok(!blocks.has(m[1]), `two README blocks are marked quickstart:${m[1]}`);
    blocks.set(m[1], { info: m[2] ?? '', lang: m[3], body: m[4] });
  }
  return blocks;
}


function which(cmd) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, cmd);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(`${cmd} not found on PATH`);
}

const terminals = new Set();
after(() => {
  for (const t of terminals) t.killGroup('SIGKILL');
});

/** A bash process standing in for a terminal: blocks are written to its stdin. */
class Terminal {
  constructor(name, cwd, env) {
    this.name = name;
    this.output = '';
    this.steps = 0;
    this.waiters = new Set();
    // Its own process group, so background jobs (`node client.mjs &`) and the foreground
    // `herald serve` are signalled with it, as a terminal's Ctrl-C does.
    this.child = spawn('bash', ['--noprofile', '--norc'], { cwd, env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    terminals.add(this);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitStatus = { code, signal };
        terminals.delete(this);
        this.notify();
        resolve(this.exitStatus);
      });
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        this.output += chunk;
        this.notify();
      });
    }
    this.child.stdin.write('set -eo pipefail\n');
  }

  notify() {
    for (const w of this.waiters) w();
  }

  /** Waits until `predicate(output)` holds; fails with the output when the shell exits first. */
  waitFor(predicate, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = predicate(this.output);
        if (value) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve(value);
        } else if (this.exitStatus) {
          this.waiters.delete(check);
          clearTimeout(timer);
          reject(new Error(`${this.name} exited (${JSON.stringify(this.exitStatus)}) before ${what}\n${this.output}`));
        }
      };
      // Only a bound on a hung run: nothing is asserted about how long a step takes.
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.name}: no ${what} within ${WAIT_MS} ms\n${this.output}`));
      }, WAIT_MS);
      this.waiters.add(check);
      check();
    });
  }

  /** Counts the lines of the output equal to `line`. */
  count(line) {
    return this.output.split('\n').filter((l) => l === line).length;
  }

  /** Types `body` and waits for it to finish; returns what it printed. */
  async run(body) {
    const n = ++this.steps;
    const marker = `__quickstart_step_${n}_done__`;
    const from = this.output.length;
    this.child.stdin.write(`${body}\nprintf '\\n%s\\n' '${marker}'\n`);
    await this.waitFor((out) => out.indexOf(`\n${marker}\n`, from) >= 0, `the end of step ${n}:\n${body}`);
    const end = this.output.indexOf(`\n${marker}\n`, from);
    return this.output.slice(from, end);
  }

  /** Types `body` without waiting (a command that keeps running, like `herald serve`). */
  type(body) {
    this.child.stdin.write(`${body}\n`);
  }

  killGroup(signal) {
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // already gone
    }
  }
}

test('the README quick start works as written, also after the server restarts', { timeout: 300_000 }, async () => {
  const blocks = quickstartBlocks();
  for (const name of ['server', 'setup', 'sign', 'client-setup', 'file', 'run-client', 'publish']) {
    assert.ok(blocks.has(name), `README.md has no block marked <!-- quickstart:${name} -->`);
  }
  const file = blocks.get('file');
  assert.equal(file.lang, 'js');
  const fileName = file.info.trim();
  assert.match(fileName, /^[\w.-]+$/, 'the quickstart:file marker names the file, e.g. client.mjs');

  assert.ok(existsSync(heraldBin), `no Herald binary at ${heraldBin}: cargo build -p herald-server --bins`);
  const nodeModules = path.join(repoRoot, 'tests', 'js', 'node_modules');
  const sioVersion = JSON.parse(readFileSync(path.join(nodeModules, 'socket.io-client', 'package.json'), 'utf8')).version;
  assert.match(sioVersion, /^4\./, 'tests/js/node_modules has socket.io-client 4 (npm ci in tests/js)');

  const root = mkdtempSync(path.join(tmpdir(), 'herald-quickstart-'));
  const bin = path.join(root, '.test-bin');
  mkdirSync(bin);
  symlinkSync(heraldBin, path.join(bin, 'herald'));
  const npmShim = path.join(bin, 'npm');
  writeFileSync(
    npmShim,
    [
      '#!/bin/sh',
      '# quickstart test: `npm install socket.io-client@4` links the tests/js copy instead of downloading it',
      'if [ "$#" -eq 2 ] && [ "$1" = install ] && [ "$2" = socket.io-client@4 ]; then',
      `  exec ln -s '${nodeModules}' node_modules`,
      'fi',
      `exec '${which('npm')}' "$@"`,
      '',
    ].join('\n'),
  );
  chmodSync(npmShim, 0o755);

  const port = await freePort();
  // A fresh environment: none of the test's own HERALD_* or npm_* settings.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_') && !k.toLowerCase().startsWith('npm_')),
  );
  env.PATH = `${bin}${path.delimiter}${process.env.PATH}`;
  env.HERALD_BIND = `127.0.0.1:${port}`;
  env.HERALD_URL = `http://127.0.0.1:${port}`;

  const startServer = async () => {
    const t = new Terminal('terminal 1 (server)', root, env);
    // `exit` after it: the shell ends once `herald serve` does, as a closed terminal would.
    t.type(`${blocks.get('server').body}\nexit`);
    await t.waitFor((out) => out.includes(`herald listening on http://127.0.0.1:${port}`), 'the listening line');
    return t;
  };

  try {
    let server = await startServer();
    const serverLogs = [];

    const t2 = new Terminal('terminal 2', root, env);
    const setupOut = await t2.run(blocks.get('setup').body);
    const key = /hk_[0-9a-f]+_[0-9a-f]+/.exec(setupOut)?.[0];
    assert.ok(key, `the setup block prints the API key:\n${setupOut}`);

    const signOut = await t2.run(blocks.get('sign').body);
    const signed = JSON.parse(signOut);
    assert.match(signed.token, /^eyJ/, 'herald sign prints a token');
    assert.ok(signed.expiresAt);

    await t2.run(blocks.get('client-setup').body);
    const cwd = (await t2.run('pwd')).trim();
    assert.ok(existsSync(path.join(cwd, 'package.json')), 'npm init -y wrote package.json');
    writeFileSync(path.join(cwd, fileName), `${file.body}\n`);

    await t2.run(blocks.get('run-client').body);
    // An ack line is `listen <channel> {"ok":true,…}` (the rest is the channel's position).
    const acks = (out, channel) =>
      out.split('\n').filter((l) => l.startsWith(`listen ${channel} {"ok":true,`)).length;
    const listened = (n) => (out) => acks(out, 'orders') >= n && acks(out, 'private-user-42') >= n && out;
    await t2.waitFor(listened(1), 'the client listening to both channels');

    const publicLine = 'event orders {"orderId":42,"status":"shipped"}';
    const privateLine = 'event private-user-42 {"text":"hello"}';
    await t2.run(blocks.get('publish').body);
    await t2.waitFor(() => t2.count(publicLine) >= 1 && t2.count(privateLine) >= 1, 'both events at the client');

    // Ctrl-C in terminal 1, then the same block again.
    server.killGroup('SIGINT');
    await server.exited;
    serverLogs.push(server.output);
    await t2.waitFor(() => t2.count('disconnected transport close') >= 1, 'the client reporting the disconnect');
    server = await startServer();

    await t2.waitFor(listened(2), 'the client listening again after reconnecting');
    await t2.run(blocks.get('publish').body);
    await t2.waitFor(() => t2.count(publicLine) >= 2 && t2.count(privateLine) >= 2, 'both events again after the reconnect');

    server.killGroup('SIGINT');
    await server.exited;
    serverLogs.push(server.output);
    for (const log of serverLogs) {
      assert.ok(!log.includes(key), 'the API key never appears in the server output');
      assert.ok(!log.includes(signed.token), 'the channel token never appears in the server output');
    }
    t2.killGroup('SIGTERM');
    await t2.exited;
  } finally {
    for (const t of terminals) t.killGroup('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  }
});
