// A real redis-server for the Redis-mode tests: started on a free port of 127.0.0.1 (with no
// persistence unless asked), stopped, restarted on the same port and paused on demand.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

import {
  createKey,
  createProject,
  freePort,
  publish,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';

export { freePort };

/** Runs `redis-cli -p port args...` and returns its output (trimmed). */
export function redisCli(port, ...args) {
  return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).trim();
}

/**
 * Starts redis-server on a free port. Fails loudly when redis-server is not installed:
 * Redis-mode tests never skip silently (`.ci/run` installs it).
 *
 * `persistent: true` keeps the data in an append-only file synced on every write, in a
 * temporary directory, so it survives `stop()` (SIGKILL) and `restart()`; `close()` removes it.
 */
export async function startRedis({ persistent = false } = {}) {
  const port = await freePort();
  const dir = persistent ? mkdtempSync(path.join(tmpdir(), 'herald-redis-')) : undefined;
  const storage = persistent
    ? ['--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always']
    : ['--save', '', '--appendonly', 'no'];
  let child;
  const boot = async () => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', ...storage], {
      stdio: 'ignore',
    });
    child.once('error', (e) => {
      throw new Error(`cannot start redis-server (apt-get install redis-server): ${e.message}`);
    });
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        if (redisCli(port, 'ping') === 'PONG') return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not answer PING`);
      await sleep(50);
    }
  };
  await boot();
  const exited = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', resolve);
    });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    cli: (...args) => redisCli(port, ...args),
    /** Stops the server (SIGKILL: no clean shutdown, like a crash or a network cut). */
    async stop() {
      child.kill('SIGKILL');
      await exited();
    },
    /** Starts it again on the same port (empty unless `persistent`). */
    async restart() {
      await boot();
    },
    /** SIGSTOP: the process stays, its connections stay open, nothing is answered. */
    pause() {
      child.kill('SIGSTOP');
    },
    /** SIGCONT after `pause()`. */
    resume() {
      child.kill('SIGCONT');
    },
    /** Stops the server and removes its data directory. */
    async close() {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exited();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy in front of Redis for one Herald instance, so a test can cut that instance's
 * Redis link (existing connections destroyed, new ones refused) and restore it.
 */
export async function startLinkProxy(redisPort) {
  const sockets = new Set();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(redisPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `redis://127.0.0.1:${port}`,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    close() {
      open = false;
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/**
 * A redis-server and `count` Herald instances in Redis mode on it, each ready, and every one
 * confirmed on the event bus: right after the instances start, a publish may answer 503 until
 * every instance has seen every other's bus subscription (docs/PROTOCOL.md: an instance not
 * yet subscribed), and a publish answered 503 may still have taken an offset, so the warm-up
 * publishes on a project and channel of its own until every instance answers 200.
 * `persistent` keeps Redis's data across `redis.restart()`. `stop()` stops them all.
 */
export async function startInstances(count, { extraArgs = [], persistent = false } = {}) {
  const redis = await startRedis({ persistent });
  const nodes = await Promise.all(
    Array.from({ length: count }, () => startHerald({ extraArgs: ['--redis-url', redis.url, ...extraArgs] })),
  );
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop().catch(() => n.kill())));
    await redis.close();
  };
  try {
    for (const n of nodes) {
      await waitFor(async () => (await request(n, 'GET', '/readyz')).status === 200, 15_000, `${n.url} ready`);
    }
    const project = uid('warm');
    await createProject(nodes[0], project);
    const { key } = await createKey(nodes[0], project, ['publish_event']);
    for (const n of nodes) {
      await waitFor(async () => (await publish(n, key, 'warm-up', 1)).status === 200, 10_000, `${n.url} publishes`);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { redis, nodes, stop };
}
