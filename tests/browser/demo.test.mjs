// The /demo page served by Herald: listen to a channel, publish from the form, see the event
// arrive; remove one channel, clear the events, disconnect (no channel left shown), and all of it
// at phone width (375 px) without horizontal scrolling. Takes screenshots (in a temporary
// directory, printed; never checked in).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { createKey, createProject, startHerald, uid } from '../js/harness.mjs';
import { launchBrowser } from './lib.mjs';

const T = { timeout: 30_000 };

/** The channel names the page shows as listened to. */
const channelsShown = (page) => page.locator('#channels .chip .name').allTextContents();

/** Whether the page is wider than its viewport (a horizontal scrollbar). */
const scrollsSideways = (page) =>
  page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);

let browser;
let herald;
const shots = mkdtempSync(path.join(tmpdir(), 'herald-demo-shots-'));

before(async () => {
  [browser, herald] = await Promise.all([launchBrowser(), startHerald()]);
});

after(async () => {
  await browser?.close();
  await herald?.stop();
  if (process.env.HERALD_KEEP_SCREENSHOTS) {
    console.log(`screenshots kept in ${shots}`);
  } else {
    rmSync(shots, { recursive: true, force: true });
  }
});

describe('/demo', () => {
  it('listens, publishes from the form and shows the event (public and private channel)', T, async () => {
    const project = uid('demo');
    await createProject(herald, project);
    const { key } = await createKey(herald, project, ['publish_event', 'sign_token']);

    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${herald.url}/demo?project=${project}&channel=orders`);
    assert.equal(await page.title(), 'Herald live demo');
    assert.equal(await page.inputValue('#project'), project);

    await page.click('#listen');
    await page.locator('#state', { hasText: 'connected' }).waitFor({ timeout: 5000 });
    await page.locator('#entries li', { hasText: 'listening' }).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), ['orders']);

    await page.fill('#key', key);
    await page.fill('#payload', '{"orderId": 4242, "status": "shipped from the demo"}');
    await page.click('#publish');
    await page.locator('#publish-result', { hasText: 'published: id' }).waitFor({ timeout: 5000 });
    const event = page.locator('#entries li.event').first();
    await event.waitFor({ timeout: 5000 });
    assert.equal(await event.locator('.channel').textContent(), 'orders');
    const shown = JSON.parse(await event.locator('.payload').textContent());
    assert.deepEqual(shown, { orderId: 4242, status: 'shipped from the demo' });

    // A private channel: the page signs a token with the pasted key (sign_token).
    await page.fill('#channel', 'private-demo');
    await page.click('#listen');
    await page.locator('#entries li', { hasText: 'listening (project' }).nth(1).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), ['orders', 'private-demo']);
    await page.fill('#payload', '{"secret": "only for private-demo"}');
    await page.click('#publish');
    await page.locator('#entries li.event', { hasText: 'only for private-demo' }).waitFor({ timeout: 5000 });

    const shot = path.join(shots, 'demo.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10_000, 'a real screenshot');
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('at phone width: removes one channel, clears the events, shows no channel once disconnected', T, async () => {
    const project = uid('phone');
    await createProject(herald, project);
    const { key } = await createKey(herald, project, ['publish_event', 'sign_token']);
    const long = 'a-rather-long-channel-name-for-a-phone-screen-0123456789';

    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.setViewportSize({ width: 375, height: 740 });
    await page.goto(`${herald.url}/demo?project=${project}&channel=orders`);
    assert.equal(await scrollsSideways(page), false, 'the empty page fits 375 px');

    await page.click('#listen');
    await page.locator('#state', { hasText: 'connected' }).waitFor({ timeout: 5000 });
    await page.fill('#channel', long);
    await page.click('#listen');
    await page.locator('#entries li', { hasText: 'listening (project' }).nth(1).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), [long, 'orders']);

    // Events with long unbroken text must wrap, not widen the page.
    await page.fill('#key', key);
    await page.fill('#pub-channel', long);
    await page.fill('#payload', JSON.stringify({ note: 'x'.repeat(200), nested: { deeper: ['y'.repeat(80)] } }));
    await page.click('#publish');
    await page.locator('#entries li.event', { hasText: 'xxxx' }).waitFor({ timeout: 5000 });
    assert.equal(await scrollsSideways(page), false, 'the page with channels and events fits 375 px');
    const shot = path.join(shots, 'demo-375px.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);

    // Remove one channel: its chip goes, and its events stop. An event published to `orders`
    // before one to the long channel would arrive first, so once the second is shown the first
    // is known not to come.
    await page.click('#channels button[aria-label="remove orders"]');
    await page.locator('#entries li', { hasText: 'removed: no longer listening' }).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), [long]);
    await page.fill('#pub-channel', 'orders');
    await page.fill('#payload', '{"after": "remove"}');
    await page.click('#publish');
    await page.locator('#publish-result', { hasText: 'published: id' }).waitFor({ timeout: 5000 });
    await page.fill('#pub-channel', long);
    await page.fill('#payload', '{"still": "listening"}');
    await page.click('#publish');
    await page.locator('#entries li.event', { hasText: 'still' }).waitFor({ timeout: 5000 });
    assert.equal(await page.locator('#entries li.event', { hasText: 'remove' }).count(), 0);

    // Clear the events.
    assert.ok((await page.locator('#entries li').count()) > 0);
    await page.click('#clear');
    assert.equal(await page.locator('#entries li').count(), 0);
    assert.equal(await page.isVisible('#log p.empty'), true);

    // Disconnect: no channel is listened to any more, so none is shown.
    await page.click('#disconnect');
    await page.locator('#state', { hasText: 'closed' }).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), []);
    // Listening again starts a new connection with only that channel.
    await page.fill('#channel', 'orders');
    await page.click('#listen');
    await page.locator('#state', { hasText: 'connected' }).waitFor({ timeout: 5000 });
    await page.locator('#entries li', { hasText: 'listening (project' }).waitFor({ timeout: 5000 });
    assert.deepEqual(await channelsShown(page), ['orders']);
    assert.equal(await scrollsSideways(page), false);

    assert.deepEqual(errors, []);
    await page.close();
  });

  it('says how to build the package when it is missing', T, async () => {
    const empty = mkdtempSync(path.join(tmpdir(), 'herald-nopkg-'));
    const h = await startHerald({ env: { HERALD_DEMO_PKG_DIR: empty } });
    try {
      const page = await browser.context.newPage();
      await page.goto(`${h.url}/demo`);
      const banner = page.locator('#missing');
      await banner.waitFor({ state: 'visible', timeout: 5000 });
      assert.match(await banner.textContent(), /not built.*sdk-wasm\/build\.sh/);
      assert.equal(await page.isDisabled('#listen'), true);
      const res = await fetch(`${h.url}/demo/pkg/index.js`);
      assert.equal(res.status, 404);
      assert.match((await res.json()).error.message, /sdk-wasm\/build\.sh/);
      await page.close();
    } finally {
      await h.stop();
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
