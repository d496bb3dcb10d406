// Private channels end to end with the official socket.io-client: tokens signed over REST,
// every refusal with its own code and no join, client events between members, rotation.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
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
  sleep,
  startHerald,
  uid,
  sign,
} from './harness.mjs';

const T = { timeout: 30_000 };


const b64url = (buf) => Buffer.from(buf).toString('base64url');
const claimsOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

/** Re-signs `claims` with HS256 and a key that is not the project's. */
function forgeWithSecret(claims, secret) {
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** Asserts that listening with `token` is refused with `code` and that the socket did not join. */
async function assertRefused(h, socket, key, channel, token, code) {
  const message = nextEvent(socket, 'system_message');
  const ack = await listen(socket, channel, token);
  assert.equal(ack.ok, false, `expected ${code}, got ${JSON.stringify(ack)}`);
  assert.equal(ack.code, code);
  // Messages are fixed sentences: never the token, never a parser's error text.
  if (token) assert.ok(!ack.message.includes(token), ack.message);
  assert.ok(!/Error\(|InvalidByte|missing field/.test(ack.message), ack.message);
  const sys = await message;
  assert.equal(sys.code, 'Error');
  assert.equal(sys.data.errorCode, code);
  const none = expectNoEvent(socket, 'event', 300);
  assert.equal((await publish(h, key, channel, { leak: code })).status, 200);
  await none;
}

describe('private channels', () => {
  let h;
  let project;
  let key; // publish_event + sign_token

  before(async () => {
    h = await startHerald();
    project = uid('priv');
    await createProject(h, project);
    key = (await createKey(h, project, ['publish_event', 'sign_token'])).key;
  });
  after(async () => h?.stop());

  it('happy path: sign over REST, listen with the token, receive events', T, async () => {
    const channel = `private-${uid('u')}`;
    const { token, expiresAt } = await sign(h, key, channel);
    const exp = Date.parse(expiresAt);
    assert.ok(exp > Date.now() + 9 * 60_000 && exp <= Date.now() + 10 * 60_000 + 2000, expiresAt);
    const claims = claimsOf(token);
    assert.equal(claims.channelName, channel);
    assert.equal(claims.projectId, project);
    assert.equal(claims.aud, 'herald-channel');
    const socket = await connect(h, project);
    const ack = await listen(socket, channel, token);
    assert.deepEqual(ack, { ok: true });
    const got = nextEvent(socket, 'event');
    assert.equal((await publish(h, key, channel, { order: 42 })).status, 200);
    const ev = await got;
    assert.equal(ev.channelName, channel);
    assert.deepEqual(ev.payload, { order: 42 });
  });

  it('each refusal has its own code and joins nothing', T, async () => {
    const channel = `private-${uid('r')}`;
    const socket = await connect(h, project);
    const { token } = await sign(h, key, channel);
    const claims = claimsOf(token);

    await assertRefused(h, socket, key, channel, undefined, 'token_missing');
    await assertRefused(h, socket, key, channel, 'garbage', 'token_malformed');
    await assertRefused(h, socket, key, channel, forgeWithSecret(claims, randomBytes(32)), 'token_bad_signature');
    const none = `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${token.split('.')[1]}.`;
    await assertRefused(h, socket, key, channel, none, 'token_bad_algorithm');

    // A token for another channel of the same project.
    const other = await sign(h, key, `private-${uid('o')}`);
    await assertRefused(h, socket, key, channel, other.token, 'token_channel_mismatch');

    // A genuine token of another project (same channel name) does not open this project's.
    const project2 = uid('priv2');
    await createProject(h, project2);
    const key2 = (await createKey(h, project2, ['publish_event', 'sign_token'])).key;
    const foreign = await sign(h, key2, channel);
    await assertRefused(h, socket, key, channel, foreign.token, 'token_project_mismatch');

    // Signing key loses sign_token.
    const narrowed = await createKey(h, project, ['publish_event', 'sign_token']);
    const t1 = await sign(h, narrowed.key, channel);
    const patched = await admin(h, 'PATCH', `/v1/admin/projects/${project}/api-keys/${narrowed.id}`, {
      scopes: ['publish_event'],
    });
    assert.equal(patched.status, 200);
    await assertRefused(h, socket, key, channel, t1.token, 'token_key_scope');

    // Signing key deleted.
    const doomed = await createKey(h, project, ['sign_token']);
    const t2 = await sign(h, doomed.key, channel);
    assert.equal((await admin(h, 'DELETE', `/v1/admin/projects/${project}/api-keys/${doomed.id}`)).status, 204);
    await assertRefused(h, socket, key, channel, t2.token, 'token_key_revoked');

    // Signing key expires.
    const shortLived = await createKey(h, project, ['sign_token'], new Date(Date.now() + 2000).toISOString());
    const t3 = await sign(h, shortLived.key, channel);
    assert.deepEqual(await listen(socket, channel, t3.token), { ok: true }, 'valid before expiry');
    socket.emit('remove', { channelName: channel });
    await sleep(2300);
    await assertRefused(h, socket, key, channel, t3.token, 'token_key_expired');
  });

  it('client events reach the other members only and are refused elsewhere', T, async () => {
    const channel = `private-${uid('chat')}`;
    const [a, b] = await Promise.all([connect(h, project), connect(h, project)]);
    for (const s of [a, b]) {
      const { token } = await sign(h, key, channel);
      assert.deepEqual(await listen(s, channel, token), { ok: true });
    }
    const bGot = nextEvent(b, 'event');
    const aNothing = expectNoEvent(a, 'event', 400);
    const ack = await a.timeout(5000).emitWithAck('event', { channelName: channel, payload: { text: 'hi' } });
    assert.deepEqual(ack, { ok: true });
    const ev = await bGot;
    assert.equal(ev.channelName, channel);
    assert.deepEqual(ev.payload, { text: 'hi' });
    await aNothing;

    // Public channel: refused, even when joined.
    assert.deepEqual(await listen(a, 'lobby'), { ok: true });
    const pub = await a.timeout(5000).emitWithAck('event', { channelName: 'lobby', payload: 1 });
    assert.equal(pub.code, 'client_event_not_allowed');
    // A private channel the socket has not joined.
    const c = await connect(h, project);
    const bSilent = expectNoEvent(b, 'event', 400);
    const notJoined = await c.timeout(5000).emitWithAck('event', { channelName: channel, payload: 1 });
    assert.equal(notJoined.code, 'not_joined');
    await bSilent;
  });

  it('secret rotation invalidates old tokens and removes the sockets that joined with them', T, async () => {
    const channel = `private-${uid('rot')}`;
    const other = `private-${uid('rot2')}`;
    const old = await sign(h, key, channel);
    const s1 = await connect(h, project);
    assert.deepEqual(await listen(s1, channel, old.token), { ok: true });
    assert.deepEqual(await listen(s1, other, (await sign(h, key, other)).token), { ok: true });
    assert.deepEqual(await listen(s1, 'lobby'), { ok: true });
    // A socket of another project is not concerned.
    const project2 = uid('rotp');
    await createProject(h, project2);
    const key2 = (await createKey(h, project2, ['publish_event', 'sign_token'])).key;
    const bystander = await connect(h, project2);
    assert.deepEqual(await listen(bystander, channel, (await sign(h, key2, channel)).token), { ok: true });
    const bystanderSystem = [];
    bystander.on('system_message', (m) => bystanderSystem.push(m));

    const removed = nextEvent(s1, 'system_message');
    assert.equal((await admin(h, 'POST', `/v1/admin/projects/${project}/rotate-secret`)).status, 204);
    const msg = await removed;
    assert.equal(msg.code, 'RemovedFromChannel');
    assert.deepEqual([...msg.data.channels].sort(), [channel, other].sort());
    assert.match(msg.message, /signing secret was rotated/);

    // Its private channels are gone; its public one stays; the other project's socket keeps its.
    const none = expectNoEvent(s1, 'event', 400);
    assert.equal((await publish(h, key, channel, { after: 'rotation' })).status, 200);
    await none;
    const pub = nextEvent(s1, 'event');
    assert.equal((await publish(h, key, 'lobby', { still: 'public' })).status, 200);
    assert.deepEqual((await pub).payload, { still: 'public' });
    const theirs = nextEvent(bystander, 'event');
    assert.equal((await publish(h, key2, channel, { other: 'project' })).status, 200);
    assert.deepEqual((await theirs).payload, { other: 'project' });
    assert.deepEqual(bystanderSystem.filter((m) => m.code === 'RemovedFromChannel'), []);

    // Old tokens no longer open anything; tokens of the new secret do, and are not removed.
    const s2 = await connect(h, project);
    assert.equal((await listen(s2, channel, old.token)).code, 'token_bad_signature');
    const fresh = await sign(h, key, channel);
    assert.deepEqual(await listen(s2, channel, fresh.token), { ok: true });
    assert.deepEqual(await listen(s1, channel, (await sign(h, key, channel)).token), { ok: true });
    const s1Removed = [];
    s1.on('system_message', (m) => m.code === 'RemovedFromChannel' && s1Removed.push(m));
    await sleep(1200); // the reconciler passes (every 5 s at most; a second notice would be here)
    const both = [nextEvent(s1, 'event'), nextEvent(s2, 'event')];
    assert.equal((await publish(h, key, channel, { new: 'secret' })).status, 200);
    for (const ev of await Promise.all(both)) assert.deepEqual(ev.payload, { new: 'secret' });
    assert.deepEqual(s1Removed, []);
  });
});

describe('token audience and expiry', () => {
  it('wrong audience and expired tokens are refused with their codes', { timeout: 60_000 }, async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-aud-'));
    try {
      // Server 1 signs with another audience.
      const s1 = await startHerald({ dataDir, extraArgs: ['--channel-auth-audience', 'someone-else'] });
      const project = uid('aud');
      await createProject(s1, project);
      const key = (await createKey(s1, project, ['publish_event', 'sign_token'])).key;
      const channel = `private-${uid('a')}`;
      const foreignAud = await sign(s1, key, channel);
      await s1.stop();

      // Server 2 signs two-hour tokens (it raised its own cap to allow it).
      const s2 = await startHerald({
        dataDir,
        extraArgs: ['--channel-token-ttl-secs', '7200', '--max-token-ttl-secs', '7200'],
      });
      const longLived = await sign(s2, key, channel);
      const lc = claimsOf(longLived.token);
      assert.equal(lc.exp - lc.iat, 7200);
      await s2.stop();

      // Same data, default audience, tokens that expire at once.
      const h = await startHerald({ dataDir, extraArgs: ['--channel-token-ttl-secs', '0'] });
      try {
        const expiring = await sign(h, key, channel);
        const socket = await connect(h, project);
        await assertRefused(h, socket, key, channel, foreignAud.token, 'token_wrong_audience');
        // The default cap is one hour: a genuine, unexpired two-hour token is refused.
        const message = nextEvent(socket, 'system_message');
        const ack = await listen(socket, channel, longLived.token);
        assert.equal(ack.code, 'token_lifetime_exceeded');
        assert.ok(!ack.message.includes(longLived.token) && !/Error\(|missing field/.test(ack.message), ack.message);
        assert.equal((await message).data.errorCode, 'token_lifetime_exceeded');
        // exp = now; the server allows 5 s of clock skew.
        await sleep(6200);
        await assertRefused(h, socket, key, channel, expiring.token, 'token_expired');
      } finally {
        await h.stop();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
