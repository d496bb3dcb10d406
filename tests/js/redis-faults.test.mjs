// Redis mode under Redis faults: a publish answered 200 reached every subscriber on every
// instance exactly once; any other answer is `503 unavailable`.
//
// Two Herald instances share one redis-server that keeps its data across a `kill -9` (an
// append-only file synced on every write, so projects and keys are still there after the
// restart). Subscribers listen on both instances (WebSocket, plus one long-polling socket on
// each); two publishers send numbered events without pause, one through each instance, and
// record every answer. Meanwhile Redis is killed and restarted, then paused (SIGSTOP) for 8 s
// and resumed. Once publishing stops and delivery settles, every subscriber's sequence numbers are
// checked against the answers.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  admin,
  collectEvents,
  connect,
  createKey,
  createProject,
  listen,
  publish,
  request,
  sleep,
  startHerald,
  uid,
  waitFor,
} from './harness.mjs';
import { startRedis } from './redis-harness.mjs';

const INSTANCE_TTL_SECS = 5;
const WEBSOCKET_SUBSCRIBERS_PER_INSTANCE = 3;
/**
 * How long Redis stays paused: longer than 3 + 3 missed probes, so the instances also try to
 * re-subscribe and force their subscriber to reconnect while Redis cannot answer (before the
 * fix, a pause this long lost acknowledged events too; a failed re-subscription once left an
 * instance refusing every publish).
 */
const PAUSE_MS = 8_000;
/** How long publishing goes on after each fault is over. */
const AFTER_FAULT_MS = 3_000;

async function waitReady(h, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while ((await request(h, 'GET', '/readyz').catch(() => ({ status: 0 }))).status !== 200) {
    if (Date.now() > deadline) throw new Error(`instance ${h.url} not ready\n${h.logs()}`);
    await sleep(100);
  }
}

describe('redis mode: Redis killed, restarted and paused under continuous publishing', () => {
  let redis;
  let nodes;
  // Set when the file is done, so publishing loops of a failed test end too.
  let finished = false;

  before(async () => {
    redis = await startRedis({ persistent: true });
    const flags = ['--redis-url', redis.url, '--instance-ttl-secs', String(INSTANCE_TTL_SECS)];
    nodes = await Promise.all([0, 1].map(() => startHerald({ extraArgs: flags })));
    await Promise.all(nodes.map((n) => waitReady(n, 15_000)));
  });

  after(async () => {
    finished = true;
    await Promise.all((nodes ?? []).map((n) => n.stop().catch(() => n.kill())));
    await redis?.close();
  });

  it('every 200 reached every subscriber exactly once; every other answer was 503 unavailable', { timeout: 60_000 }, async () => {
    const project = uid('faults');
    await createProject(nodes[0], project);
    // History deep enough for every gap of this run: a publish the bus could not confirm at
    // every instance answers 200 and the instance that missed it catches up from history, so
    // every 200 must arrive. (With the default 100 events a gap longer than 100 publishes is
    // beyond repair: the subscriber gets a `missed_events` notice, see redis-gap.test.mjs.)
    assert.equal((await admin(nodes[0], 'PATCH', `/v1/admin/projects/${project}`, { history: { size: 10_000 } })).status, 200);
    const key = (await createKey(nodes[0], project, ['publish_event'])).key;
    const channel = 'seq';

    const subscribers = [];
    for (const [i, n] of nodes.entries()) {
      const transports = [...Array(WEBSOCKET_SUBSCRIBERS_PER_INSTANCE).fill(['websocket']), ['polling']];
      for (const [j, t] of transports.entries()) {
        const socket = await connect(n, project, { transports: t });
        assert.deepEqual(await listen(socket, channel), { ok: true });
        subscribers.push({ name: `instance ${i} ${t[0]} #${j}`, socket, events: collectEvents(socket, 'event') });
      }
    }
    // The subscription is in place on both instances before the run starts.
    // (A warm-up may answer 503 while an instance's subscription is still being confirmed
    // on a loaded machine: that is the behaviour under test later, so retry it here.)
    await waitFor(async () => (await publish(nodes[0], key, channel, { warmup: true })).status === 200,
      10_000, 'a warm-up publish answered 200');
    await waitFor(() => subscribers.every((s) => s.events.length >= 1), 5_000, 'the warm-up event everywhere');
    for (const s of subscribers) s.events.length = 0;

    // Two publishers, one per instance, each numbering its events; every answer is recorded
    // with when its request was sent.
    const answers = [[], []];
    let publishing = true;
    const publishers = nodes.map(async (n, p) => {
      for (let seq = 0; publishing && !finished; seq++) {
        const sentAt = Date.now();
        const res = await publish(n, key, channel, { p, seq }).catch((e) => ({ status: 0, body: String(e) }));
        answers[p].push({ seq, sentAt, status: res.status, code: res.body?.error?.code, body: res.body });
        await sleep(2);
      }
    });

    const marks = {};
    await sleep(1_500);
    marks.killed = Date.now();
    await redis.stop();
    await sleep(1_000);
    await redis.restart();
    marks.restarted = Date.now();
    await Promise.all(nodes.map((n) => waitReady(n, 20_000)));
    await sleep(AFTER_FAULT_MS);
    marks.paused = Date.now();
    redis.pause();
    await sleep(PAUSE_MS);
    redis.resume();
    marks.resumed = Date.now();
    await Promise.all(nodes.map((n) => waitReady(n, 20_000)));
    await sleep(AFTER_FAULT_MS);
    publishing = false;
    await Promise.all(publishers);

    for (const n of nodes) assert.equal(n.exitStatus(), null, 'no instance crashed');

    // Counts per fault, for the record.
    const all = answers.flatMap((a, p) => a.map((r) => ({ ...r, p })));
    const phase = (r) =>
      r.sentAt < marks.killed ? 'before' : r.sentAt < marks.paused ? 'restart' : 'pause';
    const summary = {};
    for (const r of all) {
      const s = (summary[phase(r)] ??= { publishes: 0, ok: 0, unavailable: 0, other: 0 });
      s.publishes += 1;
      if (r.status === 200) s.ok += 1;
      else if (r.status === 503 && r.code === 'unavailable') s.unavailable += 1;
      else s.other += 1;
    }

    const others = all.filter((r) => r.status !== 200 && !(r.status === 503 && r.code === 'unavailable'));
    assert.deepEqual(others.slice(0, 5), [], 'every answer is 200 or 503 unavailable');

    const acknowledged = answers.map((a) => a.filter((r) => r.status === 200).map((r) => r.seq));
    const phaseOf = answers.map((a) => new Map(a.map((r) => [r.seq, phase(r)])));
    const ackCount = acknowledged[0].length + acknowledged[1].length;
    const got = (s, p, seq) => s.events.some((e) => e.payload.p === p && e.payload.seq === seq);
    // Delivery settles: wait (bounded) until every subscriber has every acknowledged event.
    await waitFor(
      () => subscribers.every((s) => acknowledged.every((seqs, p) => seqs.every((seq) => got(s, p, seq)))),
      10_000,
      'every acknowledged event at every subscriber',
    ).catch(() => {});
    await sleep(500); // duplicates or stragglers would arrive now

    const problems = [];
    for (const s of subscribers) {
      const seen = [new Map(), new Map()];
      for (const e of s.events) {
        if (e.payload.warmup) continue; // a late copy of a warm-up attempt
        const m = seen[e.payload.p];
        m.set(e.payload.seq, (m.get(e.payload.seq) ?? 0) + 1);
      }
      const duplicates = seen.flatMap((m, p) => [...m].filter(([, c]) => c > 1).map(([seq, c]) => `p${p}#${seq}×${c}`));
      const missing = acknowledged.flatMap((seqs, p) =>
        seqs.filter((seq) => !seen[p].has(seq)).map((seq) => `p${p}#${seq} (${phaseOf[p].get(seq)})`));
      if (duplicates.length || missing.length) {
        problems.push(`${s.name}: ${missing.length} acknowledged events missing [${missing.slice(0, 8)}], ` +
          `${duplicates.length} duplicated [${duplicates.slice(0, 8)}]`);
      }
    }
    console.log(JSON.stringify({ acknowledged: ackCount, summary, problems: problems.length }));
    assert.deepEqual(problems, [], 'no subscriber missed an acknowledged event or got one twice');

    // The system recovered after each fault.
    const okAfter = (t) => all.filter((r) => r.status === 200 && r.sentAt > t).length;
    assert.ok(okAfter(marks.restarted) > 0 && all.some((r) => r.status === 200 && r.sentAt > marks.restarted && r.sentAt < marks.paused),
      'publishes answered 200 after the restart');
    assert.ok(okAfter(marks.resumed) > 0, 'publishes answered 200 after the pause');
  });

  it('an instance stopped cleanly causes no 503; one that crashed causes 503s for at most the instance TTL', { timeout: 60_000 }, async () => {
    const project = uid('peers');
    await createProject(nodes[0], project);
    // History off: with history on, a crashed instance's shortfall is repaired (its sockets
    // recover with `since` elsewhere) and answered 200 (see redis-gap.test.mjs).
    assert.equal((await admin(nodes[0], 'PATCH', `/v1/admin/projects/${project}`, { history: { size: 0 } })).status, 200);
    const key = (await createKey(nodes[0], project, ['publish_event'])).key;
    const flags = ['--redis-url', redis.url, '--instance-ttl-secs', String(INSTANCE_TTL_SECS)];
    const publishUntil = async (done) => {
      const answers = [];
      for (let seq = 0; !done() && !finished; seq++) {
        const sentAt = Date.now();
        const res = await publish(nodes[0], key, 'peers', { seq });
        answers.push({ sentAt, status: res.status, code: res.body?.error?.code });
        await sleep(5);
      }
      return answers;
    };
    // Publishing through instance 0 is confirmed again once a new instance is in its view.
    const confirmedAgain = async () => {
      await waitFor(async () => (await publish(nodes[0], key, 'peers', { probe: true })).status === 200, 10_000,
        'a publish confirmed by every instance');
      await sleep(1_500); // the new instance is in instance 0's view by now (refreshed every second)
      assert.equal((await publish(nodes[0], key, 'peers', { probe: true })).status, 200);
    };

    // A rolling restart: the third instance says it leaves before it goes.
    const leaving = await startHerald({ extraArgs: flags });
    await waitReady(leaving, 15_000);
    await confirmedAgain();
    let stopped = false;
    const duringStop = publishUntil(() => stopped);
    await sleep(500);
    await leaving.stop();
    await sleep(1_000 + INSTANCE_TTL_SECS * 1_000);
    stopped = true;
    const stopAnswers = await duringStop;
    assert.ok(stopAnswers.length > 10);
    assert.deepEqual(stopAnswers.filter((r) => r.status !== 200), [], 'no 503 while an instance stops cleanly');

    // A crash: the instance is required until its heartbeat is older than the TTL.
    const crashing = await startHerald({ extraArgs: flags });
    await waitReady(crashing, 15_000);
    await confirmedAgain();
    const crashedAt = Date.now();
    await crashing.kill();
    let recovered = false;
    const afterCrash = publishUntil(() => recovered);
    await waitFor(async () => (await publish(nodes[0], key, 'peers', { probe: true })).status === 200
      && Date.now() - crashedAt > 200, (INSTANCE_TTL_SECS + 3) * 1_000, 'publishes confirmed again after the crash');
    recovered = true;
    const crashAnswers = await afterCrash;
    const refused = crashAnswers.filter((r) => r.status !== 200);
    assert.ok(refused.length > 0, 'a crashed instance is not silently skipped');
    assert.ok(refused.every((r) => r.status === 503 && r.code === 'unavailable'));
    const lastRefusal = Math.max(...refused.map((r) => r.sentAt));
    console.log(JSON.stringify({ cleanStop: { publishes: stopAnswers.length, unavailable: 0 },
      crash: { publishes: crashAnswers.length, unavailable: refused.length, lastRefusalAfterMs: lastRefusal - crashedAt } }));
    assert.ok(lastRefusal - crashedAt <= (INSTANCE_TTL_SECS + 1) * 1_000,
      `503s stopped within the instance TTL (last one ${lastRefusal - crashedAt} ms after the crash)`);
  });
});
