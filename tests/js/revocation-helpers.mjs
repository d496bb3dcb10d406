// Shared scenario of the revocation tests (embedded and Redis mode): a victim socket holding
// two private channels through the key that gets revoked, and bystanders that must not notice.

import assert from 'node:assert/strict';

import { collectEvents, connect, createKey, listen, nextEvent, publish, signToken, sleep, uid, waitFor } from './harness.mjs';

/** Sockets set up for one revocation scenario in `project`. */
export async function scenario(hs, project, publisherKey) {
  // `doomedKey` signs the tokens of `victim` (two private channels) and of `bystanderA`'s
  // second channel; `otherKey` signs `bystanderB`'s; everybody also listens to a public one.
  const pick = (i) => hs[i % hs.length];
  const doomed = await createKey(pick(0), project, ['sign_token']);
  const other = await createKey(pick(1), project, ['sign_token']);
  const [c1, c2, c3] = [`private-${uid('a')}`, `private-${uid('b')}`, `private-${uid('c')}`];
  const victim = await connect(pick(0), project);
  const bystanderA = await connect(pick(1), project);
  const bystanderB = await connect(pick(2), project);
  for (const s of [victim, bystanderA, bystanderB]) assert.deepEqual(await listen(s, 'public-feed'), { ok: true });
  const doomedToken = await signToken(pick(0), doomed.key, c1);
  assert.deepEqual(await listen(victim, c1, doomedToken), { ok: true });
  assert.deepEqual(await listen(victim, c2, await signToken(pick(1), doomed.key, c2)), { ok: true });
  assert.deepEqual(await listen(bystanderA, c3, await signToken(pick(2), other.key, c3)), { ok: true });
  assert.deepEqual(await listen(bystanderB, c1, await signToken(pick(0), other.key, c1)), { ok: true });
  const system = new Map([victim, bystanderA, bystanderB].map((s) => [s, collectEvents(s, 'system_message')]));
  return { doomed, doomedToken, other, c1, c2, c3, victim, bystanderA, bystanderB, system, publisherKey };
}

/** After revocation: exactly one RemovedFromChannel for the victim; others untouched. */
export async function assertRevoked(hs, sc) {
  const removed = () => sc.system.get(sc.victim).filter((m) => m.code === 'RemovedFromChannel');
  await waitFor(() => removed().length >= 1, 15_000, 'RemovedFromChannel on the victim');
  await sleep(1500); // a second notice would arrive by now
  assert.equal(removed().length, 1, 'exactly one RemovedFromChannel');
  assert.deepEqual([...removed()[0].data.channels].sort(), [sc.c1, sc.c2].sort());
  for (const s of [sc.bystanderA, sc.bystanderB]) {
    assert.equal(sc.system.get(s).filter((m) => m.code === 'RemovedFromChannel').length, 0);
  }
  // The victim no longer receives its private channels; the others keep theirs, and the
  // public channel reaches everybody.
  const victimEvents = collectEvents(sc.victim, 'event');
  const bGot = nextEvent(sc.bystanderB, 'event');
  assert.equal((await publish(hs[0], sc.publisherKey, sc.c1, { after: 'revoke' })).status, 200);
  assert.deepEqual((await bGot).payload, { after: 'revoke' });
  const aGot = nextEvent(sc.bystanderA, 'event');
  assert.equal((await publish(hs[hs.length - 1], sc.publisherKey, sc.c3, { still: 'here' })).status, 200);
  await aGot;
  const allGot = [sc.victim, sc.bystanderA, sc.bystanderB].map((s) => nextEvent(s, 'event'));
  await sleep(200);
  assert.equal((await publish(hs[0], sc.publisherKey, 'public-feed', { pub: 1 })).status, 200);
  for (const e of await Promise.all(allGot)) assert.deepEqual(e.payload, { pub: 1 });
  await sleep(300);
  assert.deepEqual(
    victimEvents.filter((e) => e.channelName !== 'public-feed'),
    [],
    'no private event reached the victim after revocation',
  );
  // The revoked key's tokens no longer open anything; another key's still do.
  const refused = await listen(sc.victim, sc.c1, sc.doomedToken);
  assert.ok(['token_key_revoked', 'token_key_expired'].includes(refused.code), JSON.stringify(refused));
  assert.deepEqual(await listen(sc.victim, sc.c1, await signToken(hs[0], sc.other.key, sc.c1)), { ok: true });
}

