// Ad-hoc measurement (not a test): publish cost with history on vs off on one server, and
// the memory bound under large payloads to many channels. `node history-cost.mjs`.
import { readFileSync } from 'node:fs';

import { admin, collectEvents, connect, createKey, createProject, publish, request, startHerald, uid, waitFor } from './harness.mjs';

const SUBSCRIBERS = Number(process.env.SUBSCRIBERS ?? 50);
const EVENTS = Number(process.env.EVENTS ?? 2000);
const CONCURRENCY = 16;

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

async function setup(h, history) {
  const id = uid('cost');
  await createProject(h, id);
  if (history) await admin(h, 'PATCH', `/v1/admin/projects/${id}`, { history });
  const { key } = await createKey(h, id, ['publish_event']);
  const sockets = await Promise.all(Array.from({ length: SUBSCRIBERS }, () => connect(h, id)));
  const boxes = [];
  for (const s of sockets) {
    boxes.push(collectEvents(s, 'event'));
    await s.timeout(5000).emitWithAck('listen', { channelName: 'c' });
  }
  return { key, sockets, boxes };
}

async function run(h, p) {
  for (const b of p.boxes) b.length = 0;
  let sent = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (sent < EVENTS) {
        sent++;
        const r = await publish(h, p.key, 'c', { n: sent, pad: 'x'.repeat(100) });
        if (r.status !== 200) throw new Error(JSON.stringify(r.body));
      }
    }),
  );
  await waitFor(() => p.boxes.every((b) => b.length >= EVENTS), 60_000, 'all delivered');
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const h = await startHerald({ extraArgs: ['--history-max-bytes', String(16 * 1024 * 1024)] });
try {
  const on = await setup(h);
  const off = await setup(h, { size: 0 });
  const results = { on: [], off: [] };
  for (let rep = 0; rep < 3; rep++) {
    results.off.push(await run(h, off));
    results.on.push(await run(h, on));
  }
  const best = (xs) => Math.min(...xs);
  console.log(`publish ${EVENTS} events to ${SUBSCRIBERS} subscribers, ${CONCURRENCY} concurrent publishers`);
  console.log(`history off: ${results.off.map((x) => x.toFixed(0)).join(', ')} ms; on: ${results.on.map((x) => x.toFixed(0)).join(', ')} ms`);
  console.log(`best-of-3 ratio on/off: ${(best(results.on) / best(results.off)).toFixed(3)}`);
  for (const s of [...on.sockets, ...off.sockets]) s.disconnect();

  // Memory bound: 4 KiB payloads to 400 channels x 100 events = ~160 MiB offered, 16 MiB bound.
  const before = rssKiB(h.pid);
  const id = uid('mem');
  await createProject(h, id);
  const { key } = await createKey(h, id, ['publish_event']);
  const payload = 'y'.repeat(4096);
  let i = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (i < 40_000) {
        const n = i++;
        const r = await publish(h, key, `m${n % 400}`, payload);
        if (r.status !== 200) throw new Error(JSON.stringify(r.body));
      }
    }),
  );
  const after = rssKiB(h.pid);
  console.log(`memory: RSS ${before} KiB before, ${after} KiB after 40000 x 4 KiB publishes to 400 channels (bound 16 MiB)`);
  const page = await request(h, 'GET', '/v1/publishers/channels/m0/history?limit=1', {
    headers: { authorization: `Bearer ${(await createKey(h, id, ['read_history'])).key}` },
  });
  console.log(`channel m0 retains from offset ${page.body.events[0]?.offset ?? '-'} to ${page.body.offset}`);
} finally {
  await h.stop();
}
