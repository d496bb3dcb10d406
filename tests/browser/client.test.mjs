// @herald/client in headless Chromium against the real server: the packed npm tarball is
// unpacked and served from its own origin, the page imports it like a web app would.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { admin, createKey, createProject, freePort, publish, startHerald, uid } from '../js/harness.mjs';
import {
  launchBrowser,
  logOf,
  openTestPage,
  servePackage,
  signToken,
  sleep,
  startHeraldAt,
  unpackTarball,
  waitForLog,
} from './lib.mjs';

const T = { timeout: 30_000 };

let browser;
let site;
let herald;
let page;
let pageErrors;
let pkgDir;
/** The server and `sign_token` key `window.signToken` uses. */
const signer = { h: null, key: null };

before(async () => {
  pkgDir = unpackTarball();
  [browser, site, herald] = await Promise.all([launchBrowser(), servePackage(pkgDir), startHerald()]);
  ({ page, errors: pageErrors } = await openTestPage(browser.context, site.url));
  await page.exposeFunction('signToken', (channelName) => signToken(signer.h, signer.key, channelName));
});

after(async () => {
  if (pageErrors?.length) console.error(`page errors:\n${pageErrors.join('\n')}`);
  await browser?.close();
  await site?.close();
  await herald?.stop();
  if (pkgDir) rmSync(path.dirname(pkgDir), { recursive: true, force: true });
});

const makeClient = (id, url, options, extra) =>
  page.evaluate(([id, url, options, extra]) => window.makeClient(id, url, options, extra), [id, url, options, extra]);
const call = (id, method, ...args) =>
  page.evaluate(([id, method, args]) => window.call(id, method, ...args), [id, method, args]);
const prop = (id, name) => page.evaluate(([id, name]) => window.clients[id][name], [id, name]);
const closeAll = () => page.evaluate(() => Promise.all(Object.values(window.clients).map((c) => c.close())));

async function ok(id, method, ...args) {
  const res = await call(id, method, ...args);
  assert.deepEqual(res, { ok: true }, `${id}.${method}(${args.map((a) => JSON.stringify(a)).join(', ')})`);
}

async function refused(id, method, code, ...args) {
  const res = await call(id, method, ...args);
  assert.equal(res.ok, false, `${id}.${method}(${JSON.stringify(args)}) should fail with ${code}`);
  assert.equal(res.error.code, code, JSON.stringify(res.error));
  assert.equal(res.error.name, 'HeraldError');
  return res.error;
}

const fast = { reconnectDelayMs: 100, reconnectDelayMaxMs: 400, requestTimeoutMs: 5000 };

describe('@herald/client in Chromium', () => {
  it('connects, listens, receives a REST publish; names are checked before anything is sent', T, async () => {
    const project = uid('p');
    await createProject(herald, project);
    const { key } = await createKey(herald, project);

    await makeClient('basic', herald.url, { projectId: project });
    assert.equal(await prop('basic', 'state'), 'idle');
    await ok('basic', 'connect');
    assert.equal(await prop('basic', 'state'), 'connected');
    await ok('basic', 'listen', 'orders');
    assert.deepEqual(await prop('basic', 'channels'), ['orders']);

    const payload = { orderId: 42, status: 'shipped', note: 'café ✓', nested: [1, { a: null }] };
    const res = await publish(herald, key, 'orders', payload);
    assert.equal(res.status, 200);
    const ev = await waitForLog(page, 'basic', (e) => e.kind === 'event', 5000, 'the published event');
    // The event carries its place in the channel's history, as the publish answered it.
    assert.equal(res.body.offset, 1);
    assert.deepEqual(ev.a, { id: res.body.id, channelName: 'orders', payload, offset: 1, epoch: res.body.epoch });

    // Refused client-side, with the server's codes; the server never hears of them (it
    // answers every request with a system_message, and none is an Error).
    await refused('basic', 'listen', 'invalid_channel_name', 'a b');
    await refused('basic', 'listen', 'invalid_channel_name', 'acme:orders');
    await refused('basic', 'listen', 'invalid_channel_name', '');
    await refused('basic', 'listen', 'ambiguous_channel_name', 'privateer');
    await refused('basic', 'listen', 'ambiguous_channel_name', 'Private-x');
    await refused('basic', 'remove', 'invalid_channel_name', 'x/y');
    await ok('basic', 'listen', 'news');
    await waitForLog(
      page,
      'basic',
      (e) => e.kind === 'system_message' && e.a.code === 'Success' && e.a.data?.channelName === 'news',
    );
    const log = await logOf(page, 'basic');
    assert.deepEqual(
      log.filter((e) => e.kind === 'system_message' && e.a.code === 'Error'),
      [],
      'no request with a bad name reached the server',
    );
    assert.deepEqual(await page.evaluate(() => window.herald.parseChannelName('private-u1')), {
      name: 'private-u1',
      private: true,
    });

    // remove: no more events from that channel.
    await ok('basic', 'remove', 'orders');
    assert.deepEqual(await prop('basic', 'channels'), ['news']);
    await publish(herald, key, 'orders', { after: 'remove' });
    await publish(herald, key, 'news', { marker: 1 });
    await waitForLog(page, 'basic', (e) => e.kind === 'event' && e.a.channelName === 'news');
    const events = (await logOf(page, 'basic')).filter((e) => e.kind === 'event');
    assert.equal(events.filter((e) => e.a.payload?.after === 'remove').length, 0);

    await ok('basic', 'close');
    assert.equal(await prop('basic', 'state'), 'closed');
    await refused('basic', 'listen', 'closed', 'orders');
    const states = (await logOf(page, 'basic')).filter((e) => e.kind === 'state').map((e) => e.a);
    assert.deepEqual(states, ['connecting', 'connected', 'closed']);

    // A refused handshake rejects connect() with the server's code.
    await makeClient('unknown', herald.url, { projectId: uid('nope') });
    await refused('unknown', 'connect', 'unknown_project');
    assert.equal(await prop('unknown', 'state'), 'closed');
    // Options are checked too.
    await makeClient('badproject', herald.url, { projectId: 'Not Valid' });
    await refused('badproject', 'connect', 'invalid_project_id');
    await closeAll();
  });

  it('private channels: authorize supplies the token; refusals carry the server code', T, async () => {
    const project = uid('p');
    await createProject(herald, project);
    const signing = await createKey(herald, project, ['sign_token']);
    const { key } = await createKey(herald, project);
    Object.assign(signer, { h: herald, key: signing.key });

    await makeClient('noauth', herald.url, { projectId: project });
    await ok('noauth', 'connect');
    await refused('noauth', 'listen', 'token_missing', 'private-u1');

    await makeClient('priv', herald.url, { projectId: project }, { authorize: 'sign' });
    await ok('priv', 'connect');
    await ok('priv', 'listen', 'private-u1');
    await ok('priv', 'listen', 'public-1'); // public: authorize is not asked
    const asked = (await logOf(page, 'priv')).filter((e) => e.kind === 'authorize').map((e) => e.a);
    assert.deepEqual(asked, ['private-u1']);
    await publish(herald, key, 'private-u1', { secret: true });
    const ev = await waitForLog(page, 'priv', (e) => e.kind === 'event');
    assert.deepEqual([ev.a.channelName, ev.a.payload], ['private-u1', { secret: true }]);

    await makeClient('garbage', herald.url, { projectId: project }, { authorize: 'garbage' });
    await ok('garbage', 'connect');
    await refused('garbage', 'listen', 'token_malformed', 'private-u1');

    await makeClient('throws', herald.url, { projectId: project }, { authorize: 'throw' });
    await ok('throws', 'connect');
    const error = await refused('throws', 'listen', 'authorize_failed', 'private-u1');
    assert.match(error.message, /backend said no/);
    await closeAll();
  });

  // Deleting the key that signed a private channel's token removes the socket from that
  // channel (the server's key revocation workflow) with one RemovedFromChannel.
  it(
    'RemovedFromChannel after the signing key is deleted: surfaced, and the channel leaves the set',
    T,
    async () => {
      const project = uid('p');
      await createProject(herald, project);
      const signing = await createKey(herald, project, ['sign_token']);
      Object.assign(signer, { h: herald, key: signing.key });

      await makeClient('revoked', herald.url, { projectId: project, ...fast }, { authorize: 'sign' });
      await ok('revoked', 'connect');
      await ok('revoked', 'listen', 'private-r1');
      await ok('revoked', 'listen', 'news');
      assert.deepEqual(await prop('revoked', 'channels'), ['news', 'private-r1']);

      const del = await admin(herald, 'DELETE', `/v1/admin/projects/${project}/api-keys/${signing.id}`);
      assert.equal(del.status, 204);
      const removed = await waitForLog(
        page,
        'revoked',
        (e) => e.kind === 'system_message' && e.a.code === 'RemovedFromChannel',
        3000,
        'system_message RemovedFromChannel',
      );
      assert.deepEqual(removed.a.data.channels, ['private-r1']);
      assert.deepEqual(await prop('revoked', 'channels'), ['news']);
      await closeAll();
    },
  );

  it('reconnects after a server restart (same data dir and port) and re-listens, calling authorize again', T, async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-restart-'));
    const bind = `127.0.0.1:${await freePort()}`;
    let h = await startHeraldAt(bind, dataDir);
    try {
      const project = uid('p');
      await createProject(h, project);
      const signing = await createKey(h, project, ['sign_token']);
      const { key } = await createKey(h, project);
      Object.assign(signer, { h, key: signing.key });

      await makeClient('restart', h.url, { projectId: project, ...fast }, { authorize: 'sign' });
      await ok('restart', 'connect');
      await ok('restart', 'listen', 'orders');
      await ok('restart', 'listen', 'private-r2');

      await h.stop();
      await waitForLog(page, 'restart', (e) => e.kind === 'state' && e.a === 'reconnecting', 5000, 'reconnecting');
      await sleep(300); // a few failed attempts against the closed port
      h = await startHeraldAt(bind, dataDir);
      signer.h = h;
      await waitForLog(
        page,
        'restart',
        (e, i, log) => e.kind === 'state' && e.a === 'connected' && log.slice(0, i).some((p) => p.a === 'reconnecting'),
        10_000,
        'connected again',
      );
      const log = await logOf(page, 'restart');
      const asked = log.filter((e) => e.kind === 'authorize').map((e) => e.a);
      assert.deepEqual(asked, ['private-r2', 'private-r2'], 'authorize is asked again on reconnection');
      const reconnecting = log.find((e) => e.kind === 'state' && e.a === 'reconnecting');
      assert.equal(reconnecting.b.attempt, 1);
      assert.equal(typeof reconnecting.b.error.code, 'string');
      assert.deepEqual(await prop('restart', 'channels'), ['orders', 'private-r2']);

      // The project and keys survived in the data dir; both channels deliver again.
      assert.equal((await publish(h, key, 'orders', { n: 1 })).status, 200);
      assert.equal((await publish(h, key, 'private-r2', { n: 2 })).status, 200);
      await waitForLog(page, 'restart', (e) => e.kind === 'event' && e.a.channelName === 'orders');
      await waitForLog(page, 'restart', (e) => e.kind === 'event' && e.a.channelName === 'private-r2');
      await closeAll();
    } finally {
      await h.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
