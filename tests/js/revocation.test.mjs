// API key revocation in embedded mode: deletion, expiry (also while the server was down), the
// external event endpoint, and a 10,000-association job.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  connect,
  createKey,
  createProject,
  expectNoEvent,
  listen,
  nextEvent,
  publish,
  request,
  signToken,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { assertRevoked, scenario } from './revocation-helpers.mjs';

const T = { timeout: 90_000 };

describe('revocation (embedded)', () => {
  let h;
  let project;
  let publisherKey;

  before(async () => {
    h = await startHerald({ extraArgs: ['--reconcile-interval-secs', '1'] });
    project = uid('rev');
    await createProject(h, project);
    publisherKey = (await createKey(h, project, ['publish_event'])).key;
  });
  after(async () => h?.stop());

  it('deleting a key removes exactly its sockets from exactly its channels, once', T, async () => {
    const sc = await scenario([h], project, publisherKey);
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/api-keys/${sc.doomed.id}`)).status, 204);
    await assertRevoked([h], sc);
  });

  it('a key reaching its expiry does the same without any call', T, async () => {
    const shortLived = await createKey(h, project, ['sign_token'], new Date(Date.now() + 2500).toISOString());
    const s = await connect(h, project);
    const ch = `private-${uid('exp')}`;
    assert.deepEqual(await listen(s, ch, await signToken(h, shortLived.key, ch)), { ok: true });
    const msg = nextEvent(s, 'system_message', 10_000);
    const removed = await msg;
    assert.equal(removed.code, 'RemovedFromChannel');
    assert.deepEqual(removed.data.channels, [ch]);
    assert.match(removed.message, /expired/);
    const none = expectNoEvent(s, 'event', 300);
    assert.equal((await publish(h, publisherKey, ch, 1)).status, 200);
    await none;
  });

  it('the external event endpoint triggers the same workflow; unauthenticated calls get 401', T, async () => {
    const sc = await scenario([h], project, publisherKey);
    const body = { type: 'ApiKeyDeleted', projectId: project, apiKeyId: sc.doomed.id };
    const anon = await request(h, 'POST', '/v1/tasks/api-key-events', { body });
    assert.equal(anon.status, 401);
    assert.equal(anon.body.error.code, 'missing_admin_token');
    const wrong = await request(h, 'POST', '/v1/tasks/api-key-events', {
      headers: { authorization: 'Bearer nope' },
      body,
    });
    assert.equal(wrong.status, 401);
    const bad = await admin(h, 'POST', '/v1/tasks/api-key-events', { type: 'Nope', projectId: project });
    assert.equal(bad.status, 400);
    const ok = await admin(h, 'POST', '/v1/tasks/api-key-events', body);
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    assert.ok(ok.body.jobId);
    await assertRevoked([h], sc);
  });

  it('ApiKeyExpired from the external endpoint ends the key and removes its sockets', T, async () => {
    const sc = await scenario([h], project, publisherKey);
    const ok = await admin(h, 'POST', '/v1/tasks/api-key-events', {
      type: 'ApiKeyExpired',
      projectId: project,
      apiKeyId: sc.doomed.id,
    });
    assert.equal(ok.status, 202);
    await assertRevoked([h], sc);
    const signAgain = await request(h, 'POST', '/v1/publishers/sign', {
      headers: { authorization: `Bearer ${sc.doomed.key}` },
      body: { channelName: sc.c1 },
    });
    assert.equal(signAgain.body.error.code, 'expired_api_key');
  });

  it('10,000 associations on one key are removed by one job (time reported)', { timeout: 180_000 }, async () => {
    const key = await createKey(h, project, ['sign_token']);
    const SOCKETS = 100;
    const CHANNELS = 100;
    const channels = Array.from({ length: CHANNELS }, (_, i) => `private-bulk-${i}`);
    const tokens = await Promise.all(channels.map((c) => signToken(h, key.key, c)));
    const sockets = await Promise.all(Array.from({ length: SOCKETS }, () => connect(h, project)));
    for (const s of sockets) {
      const acks = await Promise.all(channels.map((c, i) => listen(s, c, tokens[i])));
      assert.ok(acks.every((a) => a.ok), JSON.stringify(acks.find((a) => !a.ok)));
    }
    let removedCount = 0;
    let namedChannels = 0;
    for (const s of sockets) {
      s.on('system_message', (m) => {
        if (m.code === 'RemovedFromChannel') {
          removedCount++;
          namedChannels += m.data.channels.length;
        }
      });
    }
    const started = Date.now();
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/api-keys/${key.id}`)).status, 204);
    await waitFor(() => removedCount === SOCKETS, 60_000, `${SOCKETS} RemovedFromChannel (got ${removedCount})`);
    const elapsed = Date.now() - started;
    assert.equal(namedChannels, SOCKETS * CHANNELS);
    console.log(`# revocation of ${SOCKETS * CHANNELS} associations: ${elapsed} ms until every socket was told`);
    for (const s of sockets) s.disconnect();
  });
});

describe('revocation when the server was down at expiry', () => {
  it('fires on start', T, async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-rev-'));
    try {
      let h = await startHerald({ dataDir });
      const project = uid('down');
      await createProject(h, project);
      const key = await createKey(h, project, ['sign_token'], new Date(Date.now() + 1500).toISOString());
      await h.stop(); // down before the key expires
      await sleep(2000);
      h = await startHerald({ dataDir });
      try {
        await waitFor(() => /revocation job done[^\n]*/.test(h.logs()) && h.logs().includes(key.id), 10_000, 'the expiry job to run after start');
        assert.match(h.logs(), new RegExp(`revocation job queued[^\\n]*${key.id}`));
      } finally {
        await h.stop();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
