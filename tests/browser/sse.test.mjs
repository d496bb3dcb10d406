// Herald's SSE transport from a real browser's own `EventSource` (headless Chromium), from a
// page on another origin, no library: public and private channels with exact payloads, and
// the browser's own reconnection sending `Last-Event-ID` after the connection is cut, which
// resumes with exactly the missed events (issue 18).

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, it } from 'node:test';

import { createKey, createProject, publish, startHerald, uid, waitFor } from '../js/harness.mjs';
import { startLinkProxy } from '../js/redis-harness.mjs';
import { launchBrowser, signToken } from './lib.mjs';

const T = { timeout: 30_000 };

let browser;
let site;
let herald;
let proxy;
let page;

before(async () => {
  site = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>sse</title>');
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  [browser, herald] = await Promise.all([launchBrowser(), startHerald()]);
  proxy = await startLinkProxy(Number(new URL(herald.url).port));
  page = await browser.context.newPage();
  await page.goto(`http://127.0.0.1:${site.address().port}/`);
});

after(async () => {
  await browser?.close();
  proxy?.close();
  await herald?.stop();
  await new Promise((resolve) => (site ? site.close(resolve) : resolve()));
});

/** Opens `new EventSource(url)` in the page as `window.streams[name]`. */
function openInPage(name, url) {
  return page.evaluate(
    ([name, url]) => {
      window.streams ??= {};
      const s = { events: [], system: [], opens: 0, errors: 0 };
      const es = new EventSource(url);
      s.es = es;
      es.onopen = () => s.opens++;
      es.onerror = () => s.errors++;
      es.addEventListener('event', (e) => s.events.push({ ...JSON.parse(e.data), lastEventId: e.lastEventId }));
      es.addEventListener('system_message', (e) => s.system.push(JSON.parse(e.data)));
      window.streams[name] = s;
    },
    [name, url],
  );
}

const state = (name) =>
  page.evaluate((name) => {
    const { events, system, opens, errors } = window.streams[name];
    return { events, system, opens, errors };
  }, name);

function streamUrl(base, projectId, channels, tokens = []) {
  const q = new URLSearchParams({ projectId });
  for (const c of channels) q.append('channel', c);
  for (const t of tokens) q.append('token', t);
  return `${base}/v1/sse?${q}`;
}

describe('EventSource in Chromium', () => {
  it('receives public and private events, exact payloads, cross-origin', T, async () => {
    const id = uid('bsse');
    await createProject(herald, id);
    const { key } = await createKey(herald, id, ['publish_event', 'sign_token']);
    const token = await signToken(herald, key, 'private-me');
    await openInPage('a', streamUrl(herald.url, id, ['news'], [token]));
    await waitFor(async () => (await state('a')).system.length === 2, 5000, 'both channels listened to');
    const payloads = [{ n: 1, s: 'ünïcode ✓' }, [1, 2, { deep: null }], 'text'];
    for (const p of payloads) assert.equal((await publish(herald, key, 'news', p)).status, 200);
    assert.equal((await publish(herald, key, 'private-me', { mine: true })).status, 200);
    await waitFor(async () => (await state('a')).events.length === 4, 5000, 'four events');
    const { events } = await state('a');
    assert.deepEqual(events.map((e) => e.payload), [...payloads, { mine: true }]);
    assert.ok(events.every((e) => e.lastEventId.startsWith('v1|')));
    await page.evaluate(() => window.streams.a.es.close());
  });

  it("the browser's own reconnect resumes with Last-Event-ID: exactly the missed events", T, async () => {
    const id = uid('bsse');
    await createProject(herald, id);
    const { key } = await createKey(herald, id, ['publish_event']);
    const base = `http://127.0.0.1:${new URL(proxy.url).port}`;
    await openInPage('b', streamUrl(base, id, ['feed']));
    await waitFor(async () => (await state('b')).system.length === 1, 5000, 'listening');
    await publish(herald, key, 'feed', 1);
    await waitFor(async () => (await state('b')).events.length === 1, 5000, 'the first event');
    proxy.cut();
    await waitFor(async () => (await state('b')).errors >= 1, 5000, 'the cut seen');
    for (let i = 2; i <= 5; i++) assert.equal((await publish(herald, key, 'feed', i)).status, 200);
    proxy.restore();
    await waitFor(async () => (await state('b')).opens >= 2, 15_000, 'the reconnect');
    await waitFor(async () => (await state('b')).events.length === 5, 5000, 'the missed events');
    await publish(herald, key, 'feed', 6);
    await waitFor(async () => (await state('b')).events.length === 6, 5000, 'a live event after');
    const { events, system } = await state('b');
    assert.deepEqual(events.map((e) => e.payload), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);
    assert.equal(system.at(-1).data.recovered, true);
    await page.evaluate(() => window.streams.b.es.close());
  });
});
