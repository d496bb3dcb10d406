// Presence channels end to end (issue 19): three Redis-mode instances on one real (persistent)
// redis-server, the official socket.io-client on each; then one embedded instance. Who is in
// a channel, the `presence` events of each user transition (exactly once at every other
// member), the REST lists agreeing with what sockets see, the refusals with their own codes,
// revocation, and no ghost after `kill -9` of an instance or a Redis restart.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  expectNoEvent,
  listen,
  nextEvent,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startInstances } from './redis-harness.mjs';

const T = { timeout: 90_000 };
const INSTANCE_TTL_SECS = 2;
const MAX_MEMBERS = 3;

/** Signs a presence (or private) channel token naming the member; the whole answer. */
async function signMember(h, key, channelName, userId, userInfo) {
  const body = { channelName };
  if (userId !== undefined) body.userId = userId;
  if (userInfo !== undefined) body.userInfo = userInfo;
  return request(h, 'POST', '/v1/publishers/sign', { headers: { authorization: `Bearer ${key}` }, body });
}

async function tokenFor(h, key, channelName, userId, userInfo) {
  const res = await signMember(h, key, channelName, userId, userInfo);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.token;
}

/** The ack of a presence listen, without the history position `listen` strips anyway. */
async function join(h, socket, key, channel, userId, info) {
  return listen(socket, channel, await tokenFor(h, key, channel, userId, info));
}

const ids = (members) => members.map((m) => m.userId);

async function restMembers(h, key, channel) {
  const res = await request(h, 'GET', `/v1/publishers/channels/${channel}/presence`, {
    headers: { authorization: `Bearer ${key}` },
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.equal(res.body.channelName, channel);
  return res.body.members;
}

async function restCount(h, key, channel) {
  const res = await request(h, 'GET', `/v1/publishers/channels/${channel}/presence/count`, {
    headers: { authorization: `Bearer ${key}` },
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.count;
}

describe('presence, Redis mode: three instances', () => {
  let cluster;
  let nodes;
  let project;
  let signer; // sign_token + read_presence
  const extra = []; // instances started (and killed) by a test

  before(async () => {
    cluster = await startInstances(3, {
      persistent: true,
      extraArgs: ['--instance-ttl-secs', String(INSTANCE_TTL_SECS), '--max-presence-members', String(MAX_MEMBERS)],
    });
    nodes = cluster.nodes;
    project = uid('pres');
    await createProject(nodes[0], project);
    signer = (await createKey(nodes[0], project, ['sign_token', 'read_presence'])).key;
  });

  after(async () => {
    await Promise.all(extra.map((n) => n.kill()));
    await cluster?.stop();
  });

  const startNode = () =>
    startHerald({
      extraArgs: [
        '--redis-url',
        cluster.redis.url,
        '--instance-ttl-secs',
        String(INSTANCE_TTL_SECS),
        '--max-presence-members',
        String(MAX_MEMBERS),
      ],
    });

  it('two users, three sockets on three instances: two members everywhere, each transition once', T, async () => {
    const channel = `presence-${uid('room')}`;
    const [a1, a2, b1] = await Promise.all([connect(nodes[0], project), connect(nodes[1], project), connect(nodes[2], project)]);
    const seen = new Map([a1, a2, b1].map((s) => [s, collectEvents(s, 'presence')]));

    const ackA1 = await join(nodes[0], a1, signer, channel, 'alice', { name: 'Alice' });
    assert.equal(ackA1.ok, true, JSON.stringify(ackA1));
    assert.deepEqual(ackA1.members, [{ userId: 'alice', info: { name: 'Alice' } }]);
    assert.ok(Number.isInteger(ackA1.presenceVersion) && ackA1.presenceVersion >= 1);

    const bobAdded = nextEvent(a1, 'presence');
    const ackB1 = await join(nodes[2], b1, signer, channel, 'bob');
    assert.deepEqual(ids(ackB1.members), ['alice', 'bob']);
    const added = await bobAdded;
    assert.deepEqual(added, {
      channelName: channel,
      action: 'member_added',
      member: { userId: 'bob', info: null },
      version: ackB1.presenceVersion,
    });

    // Alice's second socket, on the third instance: not a new member, so nobody is told.
    const quiet = [a1, b1].map((s) => expectNoEvent(s, 'presence', 700));
    const ackA2 = await join(nodes[1], a2, signer, channel, 'alice', { name: 'Alice' });
    assert.deepEqual(ids(ackA2.members), ['alice', 'bob']);
    await Promise.all(quiet);

    // REST on every instance agrees with the sockets; so does the `presence` query.
    for (const n of nodes) {
      assert.deepEqual(ids(await restMembers(n, signer, channel)), ['alice', 'bob']);
      assert.equal(await restCount(n, signer, channel), 2);
    }
    const query = await b1.timeout(5000).emitWithAck('presence', { channelName: channel });
    assert.equal(query.ok, true);
    assert.deepEqual(ids(query.members), ['alice', 'bob']);

    // Alice's first socket goes: she still has one, so nobody is told; her last goes: Bob is
    // told once.
    a1.disconnect();
    await expectNoEvent(b1, 'presence', 700);
    assert.deepEqual(ids(await restMembers(nodes[2], signer, channel)), ['alice', 'bob']);
    const aliceGone = nextEvent(b1, 'presence');
    assert.equal((await a2.timeout(5000).emitWithAck('remove', { channelName: channel })).ok, true);
    const removed = await aliceGone;
    assert.equal(removed.action, 'member_removed');
    assert.equal(removed.member.userId, 'alice');
    assert.ok(removed.version > ackA2.presenceVersion);
    await sleep(500);
    assert.deepEqual(ids(await restMembers(nodes[0], signer, channel)), ['bob']);

    // Exactly once per user transition at every other member, none to the user itself.
    assert.deepEqual(
      seen.get(a1).map((e) => `${e.action}:${e.member.userId}`),
      ['member_added:bob'],
    );
    assert.deepEqual(seen.get(a2).map((e) => `${e.action}:${e.member.userId}`), []);
    assert.deepEqual(seen.get(b1).map((e) => `${e.action}:${e.member.userId}`), ['member_removed:alice']);
    b1.disconnect();
    a2.disconnect();
    await waitFor(async () => (await restCount(nodes[1], signer, channel)) === 0, 5000, 'empty channel');
  });

  it('refusals: each its own code', T, async () => {
    const channel = `presence-${uid('full')}`;
    const s = await connect(nodes[0], project);
    // A token for another channel.
    const other = await tokenFor(nodes[0], signer, `presence-${uid('other')}`, 'u1');
    assert.equal((await listen(s, channel, other)).code, 'token_channel_mismatch');
    // No token at all.
    assert.equal((await listen(s, channel)).code, 'token_missing');
    // Ambiguous names.
    for (const name of ['Presence-x', 'presencex', 'PRESENCE']) {
      assert.equal((await listen(s, name)).code, 'ambiguous_channel_name', name);
    }
    // Sign refusals: no member, a bad user id, too much info.
    assert.equal((await signMember(nodes[1], signer, channel)).body.error.code, 'presence_user_missing');
    assert.equal((await signMember(nodes[1], signer, channel, '')).body.error.code, 'invalid_user_id');
    assert.equal(
      (await signMember(nodes[1], signer, channel, 'u1', { pad: 'x'.repeat(1100) })).body.error.code,
      'presence_info_too_large',
    );
    // A full channel: the limit counts users, so a present user's second socket still joins.
    const sockets = [];
    for (let i = 0; i < MAX_MEMBERS; i++) {
      const m = await connect(nodes[i % 3], project);
      sockets.push(m);
      assert.equal((await join(nodes[0], m, signer, channel, `user-${i}`)).ok, true);
    }
    const full = await join(nodes[1], s, signer, channel, 'one-too-many');
    assert.equal(full.code, 'presence_full', JSON.stringify(full));
    assert.equal((await join(nodes[1], s, signer, channel, 'user-0')).ok, true);
    assert.equal(await restCount(nodes[2], signer, channel), MAX_MEMBERS);
    // The `presence` query: only presence channels this socket listens to.
    assert.equal((await s.timeout(5000).emitWithAck('presence', { channelName: 'orders' })).code, 'not_presence_channel');
    const notIn = await s.timeout(5000).emitWithAck('presence', { channelName: `presence-${uid('no')}` });
    assert.equal(notIn.code, 'not_joined');
    // REST: the scope, and presence channels only.
    const noScope = (await createKey(nodes[0], project, ['sign_token'])).key;
    const refused = await request(nodes[0], 'GET', `/v1/publishers/channels/${channel}/presence`, {
      headers: { authorization: `Bearer ${noScope}` },
    });
    assert.deepEqual([refused.status, refused.body.error.code], [403, 'missing_scope']);
    const publicChannel = await request(nodes[0], 'GET', '/v1/publishers/channels/orders/presence/count', {
      headers: { authorization: `Bearer ${signer}` },
    });
    assert.deepEqual([publicChannel.status, publicChannel.body.error.code], [400, 'not_presence_channel']);
    for (const m of [s, ...sockets]) m.disconnect();
  });

  it('revoking the signing key removes its users from presence and tells the others', T, async () => {
    const channel = `presence-${uid('rev')}`;
    const doomedKey = await createKey(nodes[0], project, ['sign_token']);
    const doomed = doomedKey.key;
    const victim = await connect(nodes[1], project);
    const witness = await connect(nodes[2], project);
    assert.equal((await join(nodes[0], witness, signer, channel, 'witness')).ok, true);
    const victimAdded = nextEvent(witness, 'presence');
    assert.equal((await join(nodes[0], victim, doomed, channel, 'victim')).ok, true);
    assert.equal((await victimAdded).member.userId, 'victim');

    const removed = nextEvent(witness, 'presence', 15_000);
    const deleted = await admin(nodes[0], 'DELETE', `/v1/admin/projects/${project}/api-keys/${doomedKey.id}`);
    assert.ok([200, 202, 204].includes(deleted.status), JSON.stringify(deleted.body));
    const event = await removed;
    assert.deepEqual([event.action, event.member.userId], ['member_removed', 'victim']);
    assert.deepEqual(ids(await restMembers(nodes[0], signer, channel)), ['witness']);
    victim.disconnect();
    witness.disconnect();
  });

  it('kill -9 of an instance: its users are removed within the instance TTL bound, and told', T, async () => {
    const channel = `presence-${uid('kill')}`;
    const doomedNode = await startNode();
    extra.push(doomedNode);
    await waitFor(async () => (await request(doomedNode, 'GET', '/readyz')).status === 200, 15_000, 'ready');
    const witness = await connect(nodes[0], project);
    const victim = await connect(doomedNode, project);
    assert.equal((await join(nodes[0], witness, signer, channel, 'witness')).ok, true);
    assert.equal((await join(doomedNode, victim, signer, channel, 'ghost')).ok, true);
    assert.deepEqual(ids(await restMembers(nodes[1], signer, channel)), ['ghost', 'witness']);

    const events = collectEvents(witness, 'presence');
    const killedAt = Date.now();
    await doomedNode.kill();
    // Documented bound: 1.5 × the instance TTL after its last heartbeat (docs/PROTOCOL.md),
    // with slack for a loaded CI machine.
    await waitFor(() => events.length >= 1, 1.5 * INSTANCE_TTL_SECS * 1000 + 8000, 'member_removed of the dead instance');
    assert.deepEqual([events[0].action, events[0].member.userId], ['member_removed', 'ghost']);
    console.log(`kill -9 → member_removed after ${Date.now() - killedAt} ms`);
    assert.deepEqual(ids(await restMembers(nodes[2], signer, channel)), ['witness']);
    await sleep(1000);
    assert.equal(events.length, 1, 'removed exactly once across the surviving instances');
    witness.disconnect();
  });

  it('members Redis lost come back once the link reconnects, with versions that only grow', T, async () => {
    const channel = `presence-${uid('lost')}`;
    const [witness, member] = await Promise.all([connect(nodes[0], project), connect(nodes[1], project)]);
    const held = (await join(nodes[0], witness, signer, channel, 'witness')).presenceVersion;
    const added = nextEvent(witness, 'presence');
    assert.equal((await join(nodes[1], member, signer, channel, 'member')).ok, true);
    const heldAfter = (await added).version;
    assert.ok(heldAfter > held);

    // What a Redis restart without persistence does to presence: its keys are gone, and every
    // connection is cut.
    const keys = cluster.redis.cli('--scan', '--pattern', '*:presence:*').split('\n').filter(Boolean);
    assert.ok(keys.length > 0, 'presence keys exist');
    cluster.redis.cli('DEL', ...keys);
    assert.deepEqual(await restMembers(nodes[2], signer, channel), []);
    const events = collectEvents(witness, 'presence');
    cluster.redis.cli('CLIENT', 'KILL', 'TYPE', 'normal');
    await waitFor(
      async () => {
        const res = await request(nodes[2], 'GET', `/v1/publishers/channels/${channel}/presence`, {
          headers: { authorization: `Bearer ${signer}` },
        });
        return res.status === 200 && ids(res.body.members).join() === 'member,witness';
      },
      20_000,
      'both members re-asserted',
    );
    // The witness hears of the member again, at a version above the one it holds (a version
    // that restarted from 1 would look stale and be ignored by a client).
    await waitFor(() => events.some((e) => e.member.userId === 'member'), 10_000, 'member_added again');
    const again = events.find((e) => e.member.userId === 'member');
    assert.equal(again.action, 'member_added');
    assert.ok(again.version > heldAfter, `${again.version} > ${heldAfter}`);
    assert.ok(!events.some((e) => e.member.userId === 'witness'), 'no event about itself');
    witness.disconnect();
    member.disconnect();
  });

  it('no ghost after a Redis restart: an instance killed while Redis was down is reaped after', T, async () => {
    const channel = `presence-${uid('rr')}`;
    const doomedNode = await startNode();
    extra.push(doomedNode);
    await waitFor(async () => (await request(doomedNode, 'GET', '/readyz')).status === 200, 15_000, 'ready');
    const witness = await connect(nodes[0], project);
    const victim = await connect(doomedNode, project);
    assert.equal((await join(nodes[0], witness, signer, channel, 'witness')).ok, true);
    assert.equal((await join(doomedNode, victim, signer, channel, 'ghost')).ok, true);

    await cluster.redis.stop();
    await doomedNode.kill();
    await cluster.redis.restart();
    for (const n of nodes) {
      await waitFor(async () => (await request(n, 'GET', '/readyz')).status === 200, 20_000, `${n.url} ready again`);
    }
    await waitFor(
      async () => {
        const res = await request(nodes[1], 'GET', `/v1/publishers/channels/${channel}/presence`, {
          headers: { authorization: `Bearer ${signer}` },
        });
        return res.status === 200 && ids(res.body.members).join() === 'witness';
      },
      20_000,
      'the ghost reaped after the restart',
    );
    // The surviving member is still there, on every instance.
    for (const n of nodes) assert.deepEqual(ids(await restMembers(n, signer, channel)), ['witness']);
    witness.disconnect();
  });
});

describe('presence, embedded mode', () => {
  let h;
  let project;
  let key;

  before(async () => {
    h = await startHerald();
    project = uid('pe');
    await createProject(h, project);
    key = (await createKey(h, project, ['sign_token', 'read_presence'])).key;
  });

  after(async () => {
    await h?.stop();
  });

  it('members, join and leave events in one process', T, async () => {
    const channel = `presence-${uid('e')}`;
    const [a, b] = await Promise.all([connect(h, project), connect(h, project)]);
    assert.deepEqual(ids((await join(h, a, key, channel, 'a')).members), ['a']);
    const added = nextEvent(a, 'presence');
    assert.deepEqual(ids((await join(h, b, key, channel, 'b')).members), ['a', 'b']);
    assert.deepEqual([(await added).action, (await added).member.userId], ['member_added', 'b']);
    assert.deepEqual(ids(await restMembers(h, key, channel)), ['a', 'b']);
    const gone = nextEvent(a, 'presence');
    b.disconnect();
    assert.deepEqual([(await gone).action, (await gone).member.userId], ['member_removed', 'b']);
    assert.equal(await restCount(h, key, channel), 1);
    a.disconnect();
  });
});
