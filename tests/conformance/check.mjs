#!/usr/bin/env node
// Compares the conformance reports of every platform with the spec: reads
// tests/conformance/scenarios.json and target/conformance/<platform>.json (written by the Rust,
// browser and Kotlin runners: [{name, passed, error?}]), prints a table scenario × platform and
// exits 1 when a report is missing, misses a scenario, names one the spec does not have, names
// one twice, or has one that failed, or when the spec has a step kind the README does not
// document (e.g. an `expect: recovery` without a boolean `recovered`).
//
//   node tests/conformance/check.mjs [platform …]     (default: rust browser kotlin)

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const platforms = process.argv.length > 2 ? process.argv.slice(2) : ['rust', 'browser', 'kotlin'];
const spec = JSON.parse(readFileSync(path.join(root, 'tests', 'conformance', 'scenarios.json'), 'utf8'));
const names = spec.scenarios.map((s) => s.name);
const problems = [];

const dup = names.filter((n, i) => names.indexOf(n) !== i);
if (dup.length) problems.push(`the spec names scenarios twice: ${dup.join(', ')}`);

// Every step is one the README documents (and every runner interprets), with its fields.
const KINDS = {
  do: ['connect', 'listen', 'remove', 'pause', 'resume', 'close'],
  server: ['publish', 'tokens', 'expect_token_requests', 'delete_key', 'restart', 'flood', 'history', 'cut', 'mend', 'publish_stream', 'stop_stream', 'member_join', 'member_leave'],
  expect: ['state', 'event', 'system', 'no_event', 'recovery', 'offsets', 'presence', 'presence_synced', 'members'],
};
const ACTIONS = ['member_added', 'member_removed'];
const isUserList = (users) => Array.isArray(users) && users.every((u) => typeof u === 'string');
const REASONS = ['history_expired', 'epoch_changed', 'history_disabled', 'offset_gap'];
for (const { name, steps } of spec.scenarios) {
  for (const [i, step] of steps.entries()) {
    const kind = Object.keys(KINDS).find((k) => k in step);
    const where = `${name} step ${i + 1} ${JSON.stringify(step)}`;
    if (!kind || !KINDS[kind].includes(step[kind])) {
      problems.push(`${where}: not a documented step`);
    } else if (step.expect === 'recovery') {
      if (typeof step.channel !== 'string' || typeof step.recovered !== 'boolean') problems.push(`${where}: needs channel and a boolean recovered`);
      if (step.reason !== undefined && !REASONS.includes(step.reason)) problems.push(`${where}: reason must be one of ${REASONS.join(', ')}`);
    } else if (step.expect === 'presence') {
      if (typeof step.channel !== 'string' || typeof step.user !== 'string') problems.push(`${where}: needs channel and user`);
      if (!ACTIONS.includes(step.action)) problems.push(`${where}: action must be one of ${ACTIONS.join(', ')}`);
    } else if (step.expect === 'presence_synced' || step.expect === 'members') {
      if (typeof step.channel !== 'string' || !isUserList(step.users)) problems.push(`${where}: needs channel and a list of user ids`);
    } else if (step.server === 'member_join') {
      if (typeof step.channel !== 'string' || !step.channel.startsWith('presence-') || typeof step.user !== 'string') {
        problems.push(`${where}: needs a presence- channel and a user`);
      }
    } else if (step.server === 'member_leave') {
      if (typeof step.user !== 'string') problems.push(`${where}: needs user`);
    } else if (step.expect === 'offsets') {
      if (typeof step.channel !== 'string') problems.push(`${where}: needs channel`);
      if (step.count !== undefined && !Number.isInteger(step.count)) problems.push(`${where}: count must be an integer`);
    }
  }
}

/** platform → Map(name → entry) */
const results = new Map();
for (const platform of platforms) {
  const file = path.join(root, 'target', 'conformance', `${platform}.json`);
  const byName = new Map();
  results.set(platform, byName);
  if (!existsSync(file)) {
    problems.push(`${platform}: no report (${path.relative(root, file)}): did its runner run?`);
    continue;
  }
  let report;
  try {
    report = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    problems.push(`${platform}: ${path.relative(root, file)} is not JSON: ${e.message}`);
    continue;
  }
  if (!Array.isArray(report)) {
    problems.push(`${platform}: the report is not a list`);
    continue;
  }
  for (const entry of report) {
    if (typeof entry?.name !== 'string' || typeof entry.passed !== 'boolean') {
      problems.push(`${platform}: an entry is not {name, passed}: ${JSON.stringify(entry)}`);
      continue;
    }
    if (byName.has(entry.name)) problems.push(`${platform}: reports ${entry.name} twice`);
    byName.set(entry.name, entry);
    if (!names.includes(entry.name)) problems.push(`${platform}: reports ${entry.name}, which the spec does not have`);
    else if (!entry.passed) problems.push(`${platform}: ${entry.name} failed: ${entry.error ?? '(no error given)'}`);
  }
  for (const name of names) {
    if (!byName.has(name)) problems.push(`${platform}: ${name} was not reported`);
  }
}

const extra = [...new Set([...results.values()].flatMap((m) => [...m.keys()]))].filter((n) => !names.includes(n));
const rows = [...names, ...extra];
const width = Math.max('scenario'.length, ...rows.map((n) => n.length));
const cell = (platform, name) => {
  const entry = results.get(platform).get(name);
  if (!names.includes(name)) return entry ? 'EXTRA' : '';
  if (!entry) return 'MISSING';
  return entry.passed ? 'pass' : 'FAIL';
};
const line = (cells) => cells.map((c, i) => c.padEnd(i === 0 ? width : Math.max(platforms[i - 1].length, 7))).join('  ');
console.log(line(['scenario', ...platforms]));
for (const name of rows) console.log(line([name, ...platforms.map((p) => cell(p, name))]));

if (problems.length) {
  console.error(`\nconformance: ${problems.length} problem(s):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  process.exit(1);
}
console.log(`\nconformance: ${names.length} scenarios passed on ${platforms.join(', ')}`);
