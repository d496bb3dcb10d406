// The package's size check (size.mjs) on the built package (sdk-wasm/pkg, so run it after
// sdk-wasm/build.sh): within the recorded budget it passes and prints every file's gzip and
// brotli size; over a budget (HERALD_WASM_SIZE_BUDGET) it fails with exit code 1 and says so.
//   node --test sdk-wasm/tools/size.test.mjs
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const budget = JSON.parse(readFileSync(join(here, '..', 'size-budget.json'), 'utf8'));

function size(env) {
  const { HERALD_WASM_SIZE_BUDGET: _, ...rest } = process.env;
  return spawnSync(process.execPath, [join(here, 'size.mjs')], { env: { ...rest, ...env }, encoding: 'utf8' });
}

function gzipTotal(stdout) {
  const total = stdout.split('\n').find((l) => l.trim().startsWith('total'));
  assert.ok(total, stdout);
  return Number(total.match(/(\d+) B gzip/)[1]);
}

test('the built package is within the recorded budget, and every shipped file is measured', () => {
  const run = size({});
  assert.equal(run.status, 0, run.stdout + run.stderr);
  for (const file of budget.files) assert.match(run.stdout, new RegExp(`${file.replace('.', '\\.')} .* B gzip .* B brotli`));
  assert.ok(gzipTotal(run.stdout) <= budget.gzipBytes);
  assert.match(run.stdout, /within budget/);
});

test('a package over its budget fails the check with exit code 1', () => {
  const within = gzipTotal(size({}).stdout);
  const run = size({ HERALD_WASM_SIZE_BUDGET: String(within - 1) });
  assert.equal(run.status, 1, run.stdout + run.stderr);
  assert.match(run.stderr, /OVER BUDGET: gzip \d+ B .* budget \d+ B/);
  const exact = size({ HERALD_WASM_SIZE_BUDGET: String(within) });
  assert.equal(exact.status, 0, exact.stdout + exact.stderr);
});

test('a budget that is not a positive number of bytes is an error, not a pass', () => {
  const run = size({ HERALD_WASM_SIZE_BUDGET: 'lots' });
  assert.equal(run.status, 2, run.stdout + run.stderr);
});
