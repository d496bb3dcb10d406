// Operations: Prometheus metrics after a scripted session.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  connect,
  createKey,
  createProject,
  listen,
  nextEvent,
  publish,
  request,
  startHerald,
  uid,
} from './harness.mjs';

/** Parses the Prometheus text format into `name{labels}` → value. */
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

describe('metrics', () => {
  let h;
  let metricsUrl;
  before(async () => {
    h = await startHerald({ extraArgs: ['--metrics-bind', '127.0.0.1:0'] });
    const m = /herald metrics on (http:\/\/\S+)/.exec(h.logs());
    assert.ok(m, h.logs());
    metricsUrl = m[1];
  });
  after(async () => h?.stop());

  const scrape = async () => parseMetrics(await (await fetch(metricsUrl)).text());

  it('a scripted session shows in every counter', { timeout: 30_000 }, async () => {
    const project = uid('ops');
    await createProject(h, project);
    const pub = await createKey(h, project, ['publish_event']);
    const signer = await createKey(h, project, ['sign_token']);

    const a = await connect(h, project);
    const b = await connect(h, project);
    await assert.rejects(connect(h, uid('nope')), /unknown_project/);
    assert.deepEqual(await listen(a, 'news'), { ok: true });
    assert.deepEqual(await listen(b, 'news'), { ok: true });
    const sign = await request(h, 'POST', '/v1/publishers/sign', {
      headers: { authorization: `Bearer ${signer.key}` },
      body: { channelName: 'private-ops' },
    });
    assert.deepEqual(await listen(a, 'private-ops', sign.body.token), { ok: true });
    assert.equal((await listen(b, 'private-ops', 'garbage')).code, 'token_malformed');
    for (let i = 0; i < 3; i++) {
      const got = nextEvent(b, 'event');
      assert.equal((await publish(h, pub.key, 'news', { i })).status, 200);
      await got;
    }
    assert.equal((await publish(h, 'hk_nope', 'news', 1)).status, 401);
    const removed = nextEvent(a, 'system_message', 10_000);
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/api-keys/${signer.id}`)).status, 204);
    assert.equal((await removed).code, 'RemovedFromChannel');

    let m;
    const deadline = Date.now() + 5000;
    for (;;) {
      m = await scrape();
      if (m.get('herald_revocation_jobs_total{event="done"}') === 1) break;
      if (Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const expect = {
      herald_sockets_connected: 2,
      'herald_subscriptions{kind="public"}': 2,
      'herald_subscriptions{kind="private"}': 0,
      'herald_connect_refusals_total{code="unknown_project"}': 1,
      'herald_listen_refusals_total{code="token_malformed"}': 1,
      'herald_auth_failures_total{reason="token_malformed"}': 1,
      'herald_auth_failures_total{reason="unknown_api_key"}': 1,
      'herald_publishes_total{outcome="ok"}': 3,
      'herald_publishes_total{outcome="refused"}': 1,
      'herald_deliveries_total{outcome="queued"}': 6,
      [`herald_api_key_requests_total{api_key_id="${pub.id}",operation="publish"}`]: 3,
      [`herald_api_key_requests_total{api_key_id="${signer.id}",operation="sign"}`]: 1,
      'herald_revocation_jobs_total{event="queued"}': 1,
      'herald_revocation_jobs_total{event="done"}': 1,
      herald_revocation_sockets_removed_total: 1,
      herald_publish_duration_seconds_count: 4,
    };
    for (const [name, value] of Object.entries(expect)) {
      assert.equal(m.get(name), value, `${name} (have: ${[...m.keys()].filter((k) => k.startsWith(name.split('{')[0])).map((k) => `${k}=${m.get(k)}`).join(', ')})`);
    }
    // Labels never carry a secret.
    const text = await (await fetch(metricsUrl)).text();
    assert.ok(!text.includes(pub.key) && !text.includes(signer.key.split('_')[2]));
  });
});
