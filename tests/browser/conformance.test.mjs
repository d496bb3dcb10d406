// The conformance suite's browser runner: an interpreter of tests/conformance/scenarios.json
// driving the packed @herald/client in headless Chromium (the page of lib.mjs, which imports
// the package like a web app), against the real binary that tests/conformance/conductor.mjs
// starts and drives (server steps are written once there). One test per scenario, by name;
// the results go to target/conformance/browser.json for tests/conformance/check.mjs.
// Step kinds: tests/conformance/README.md.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';

import { heraldBin, repoRoot } from '../js/harness.mjs';
import { launchBrowser, openTestPage, servePackage, sleep, unpackTarball } from './lib.mjs';

const EXPECT_TIMEOUT_MS = 15_000;
const spec = JSON.parse(readFileSync(path.join(repoRoot, 'tests', 'conformance', 'scenarios.json'), 'utf8'));
const report = [];

let browser;
let site;
let page;
let pageErrors;
let pkgDir;
let conductor;

/** Starts conductor.mjs; resolves with {control, herald, post(path, body), stop()}. */
async function startConductor() {
  const child = spawn(process.execPath, [path.join(repoRoot, 'tests', 'conformance', 'conductor.mjs')], {
    env: { ...process.env, HERALD_BIN: heraldBin },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // Not killed on exit: a SIGKILL would leave Herald behind. When this process ends, the
  // conductor's stdin closes, and it stops Herald and exits by itself.
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once('line', resolve)),
    exited.then((code) => Promise.reject(new Error(`the conductor exited (${code}) before it was ready`))),
  ]);
  lines.on('line', () => {});
  const { control, herald } = JSON.parse(first);
  const post = async (urlPath, body = {}) => {
    const res = await fetch(control + urlPath, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(60_000),
    });
    const answer = await res.json();
    if (!res.ok) throw new Error(answer.error ?? `conductor ${urlPath}: HTTP ${res.status}`);
    return answer;
  };
  return {
    control,
    herald,
    post,
    async stop() {
      await post('/stop').catch(() => {});
      child.stdin.end();
      await exited;
    },
  };
}

before(async () => {
  pkgDir = unpackTarball();
  [browser, site, conductor] = await Promise.all([launchBrowser(), servePackage(pkgDir), startConductor()]);
  ({ page, errors: pageErrors } = await openTestPage(browser.context, site.url));
  // The page's `authorize: 'sign'` asks window.signToken: here, the conductor's token endpoint
  // (the app's backend), which counts the requests per channel.
  await page.exposeFunction('signToken', async (channel) => (await conductor.post('/token', { channel })).token);
});

after(async () => {
  mkdirSync(path.join(repoRoot, 'target', 'conformance'), { recursive: true });
  writeFileSync(path.join(repoRoot, 'target', 'conformance', 'browser.json'), JSON.stringify(report, null, 2));
  if (pageErrors?.length) console.error(`page errors:\n${pageErrors.join('\n')}`);
  await browser?.close();
  await site?.close();
  await conductor?.stop();
  if (pkgDir) rmSync(path.dirname(pkgDir), { recursive: true, force: true });
});

/** What client `id` emitted from index `from` on, with flood-sized payloads shortened. */
const heardFrom = (id, from) =>
  page.evaluate(
    ([id, from]) =>
      (window.logs[id] ?? []).slice(from).map((e) => {
        if (e.kind !== 'event') return e;
        const size = JSON.stringify(e.a.payload ?? null).length;
        return size > 2048 ? { ...e, a: { ...e.a, payload: { shortened: size } } } : e;
      }),
    [id, from],
  );

/** One scenario's interpreter state: the client's log as read so far and the cursor in it. */
class Run {
  constructor(id, fresh) {
    this.id = id;
    this.fresh = fresh;
    this.heard = [];
    this.cursor = 0;
    this.saved = {};
    this.connected = false;
    this.paused = null;
  }

  async refresh() {
    this.heard.push(...(await heardFrom(this.id, this.heard.length)));
  }

  async waitFor(what, matches) {
    const deadline = Date.now() + EXPECT_TIMEOUT_MS;
    for (;;) {
      await this.refresh();
      const i = this.heard.findIndex((e, i) => i >= this.cursor && matches(e));
      if (i >= 0) {
        this.cursor = i + 1;
        return;
      }
      if (Date.now() > deadline) {
        const since = this.heard.slice(this.cursor, this.cursor + 40).map((e) => JSON.stringify(e).slice(0, 300));
        throw new Error(`timed out after ${EXPECT_TIMEOUT_MS} ms waiting for ${what}; heard since the last match: ${since.join(', ')}`);
      }
      await sleep(25);
    }
  }

  async call(step, method, ...args) {
    const res = await page.evaluate(([id, method, args]) => window.call(id, method, ...args), [this.id, method, args]);
    if (step.error === undefined) {
      assert.ok(res.ok, `${method} failed: ${JSON.stringify(res.error)}`);
    } else {
      assert.equal(res.ok, false, `${method} succeeded, expected the error ${step.error}`);
      assert.equal(res.error.code, step.error, `${method} failed with ${JSON.stringify(res.error)}`);
    }
  }

  async step(step) {
    if (step.server !== undefined) {
      const answer = await conductor.post('/step', step);
      if (step.save) this.saved[step.save] = answer.id;
      return;
    }
    switch (step.do) {
      case undefined:
        break;
      case 'connect':
        await page.evaluate(
          ([id, url, options]) => window.makeClient(id, url, options, { authorize: 'sign' }),
          [this.id, this.fresh.herald, { projectId: this.fresh.project, reconnectDelayMs: 100, reconnectDelayMaxMs: 1000 }],
        );
        this.connected = true;
        return this.call(step, 'connect');
      case 'listen':
        return this.call(step, 'listen', step.channel);
      case 'remove':
        return this.call(step, 'remove', step.channel);
      case 'close':
        return this.call(step, 'close');
      case 'pause':
        // The page's event loop is blocked (a busy loop that asks the conductor with synchronous
        // XHR whether to go on): no WebSocket message is handled, so the client reads nothing.
        await conductor.post('/hold');
        this.paused = true;
        await page.evaluate((control) => {
          setTimeout(() => {
            for (;;) {
              const xhr = new XMLHttpRequest();
              xhr.open('GET', `${control}/hold`, false);
              xhr.send();
              if (xhr.responseText !== 'held') return;
              const until = Date.now() + 20;
              while (Date.now() < until) {
                // busy: the event loop stays blocked
              }
            }
          }, 0);
        }, conductor.control);
        return;
      case 'resume':
        await conductor.post('/release');
        this.paused = false;
        await page.evaluate(() => true); // answers once the busy loop has ended
        return;
      default:
        throw new Error(`unknown do step ${JSON.stringify(step.do)}`);
    }
    switch (step.expect) {
      case 'state':
        return this.waitFor(`state ${step.state}`, (e) => e.kind === 'state' && e.a === step.state);
      case 'event': {
        const id = step.id_of === undefined ? undefined : this.saved[step.id_of];
        return this.waitFor(
          `an event on ${step.channel} ${JSON.stringify(step.payload)}`,
          (e) =>
            e.kind === 'event' &&
            e.a.channelName === step.channel &&
            (step.payload === undefined || isDeepEqual(e.a.payload, step.payload)) &&
            (id === undefined || e.a.id === id),
        );
      }
      case 'system':
        return this.waitFor(
          `system_message ${step.code}`,
          (e) =>
            e.kind === 'system_message' &&
            e.a.code === step.code &&
            (step.channels === undefined || isDeepEqual(e.a.data?.channels, step.channels)) &&
            (step.error_code === undefined || e.a.data?.errorCode === step.error_code),
        );
      case 'no_event': {
        await sleep(step.ms ?? 0);
        await this.refresh();
        const leaked = this.heard
          .slice(this.cursor)
          .filter((e) => e.kind === 'event' && (step.channel === undefined || e.a.channelName === step.channel));
        assert.deepEqual(leaked, [], 'unexpected events');
        return;
      }
      case 'recovery':
        return this.waitFor(
          `recovery of ${step.channel}: ${step.recovered} ${step.reason ?? ''}`,
          (e) =>
            e.kind === 'recovery' &&
            e.a.channelName === step.channel &&
            e.a.recovered === step.recovered &&
            (step.reason === undefined || e.a.reason === step.reason),
        );
      case 'offsets': {
        await this.refresh();
        const offsets = this.heard.filter((e) => e.kind === 'event' && e.a.channelName === step.channel).map((e) => e.a.offset);
        assert.deepEqual(offsets, offsets.map((_, i) => i + 1), `offsets on ${step.channel} are 1..n in order`);
        if (step.count !== undefined) assert.equal(offsets.length, step.count, `events on ${step.channel}`);
        return;
      }
      case 'presence':
        return this.waitFor(
          `presence ${step.action} ${step.user} on ${step.channel}`,
          (e) =>
            e.kind === 'presence' &&
            e.a.channelName === step.channel &&
            e.a.action === step.action &&
            e.a.member.userId === step.user &&
            (step.info === undefined || isDeepEqual(e.a.member.info, step.info)),
        );
      case 'presence_synced':
        return this.waitFor(
          `presence synced on ${step.channel}: ${JSON.stringify(step.users)}`,
          (e) =>
            e.kind === 'presence_synced' &&
            e.a.channelName === step.channel &&
            isDeepEqual(e.a.members.map((m) => m.userId), step.users),
        );
      case 'members': {
        const users = await page.evaluate(
          ([id, channel]) => window.clients[id].members(channel).map((m) => m.userId),
          [this.id, step.channel],
        );
        assert.deepEqual(users, step.users, `members of ${step.channel}`);
        return;
      }
      default:
        throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }

  async close() {
    if (this.paused) {
      await conductor.post('/release');
      await page.evaluate(() => true);
    }
    if (this.connected) await page.evaluate((id) => window.clients[id]?.close(), this.id);
  }
}

function isDeepEqual(a, b) {
  try {
    assert.deepStrictEqual(a, b);
    return true;
  } catch {
    return false;
  }
}

describe('conformance: @herald/client in Chromium', () => {
  for (const scenario of spec.scenarios) {
    it(scenario.name, { timeout: 90_000 }, async () => {
      const run = new Run(scenario.name, await conductor.post('/scenario'));
      try {
        for (const [i, step] of scenario.steps.entries()) {
          try {
            await run.step(step);
          } catch (e) {
            e.message = `step ${i + 1} ${JSON.stringify(step)}: ${e.message}`;
            throw e;
          }
        }
        report.push({ name: scenario.name, passed: true });
      } catch (e) {
        report.push({ name: scenario.name, passed: false, error: e.message });
        throw e;
      } finally {
        await run.close();
      }
    });
  }
});
