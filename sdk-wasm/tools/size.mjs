// What @herald/client weighs on the wire: raw, gzip -9 and brotli (quality 11) sizes of the
// files a bundler ships to a browser (the wasm, wasm-bindgen's glue, the wrapper), and a check
// against the budget in sdk-wasm/size-budget.json. Node's own zlib, no dependencies.
//
//   node sdk-wasm/tools/size.mjs [PKG_DIR]          (default sdk-wasm/pkg)
//
// Exits 1 when the gzipped total is over the budget's `gzipBytes`; HERALD_WASM_SIZE_BUDGET
// (bytes) overrides it, e.g. to see the check fail. Each file is compressed on its own, as a
// server sends it (a bundler that merges the JavaScript compresses it a little better).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = process.argv[2] ?? join(here, '..', 'pkg');
const budget = JSON.parse(readFileSync(join(here, '..', 'size-budget.json'), 'utf8'));
const override = process.env.HERALD_WASM_SIZE_BUDGET;
const limit = override !== undefined && override !== '' ? Number(override) : budget.gzipBytes;
if (!Number.isInteger(limit) || limit <= 0) {
  console.error(`size.mjs: the gzip budget must be a positive integer of bytes, not ${override ?? budget.gzipBytes}`);
  process.exit(2);
}

const kb = (n) => `${(n / 1000).toFixed(1)} KB`;
const rows = budget.files.map((file) => {
  const bytes = readFileSync(join(pkg, file));
  const gzip = gzipSync(bytes, { level: 9 }).length;
  const brotli = brotliCompressSync(bytes, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: 11,
      [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
    },
  }).length;
  return { file, raw: bytes.length, gzip, brotli };
});
const total = rows.reduce(
  (t, r) => ({ file: 'total', raw: t.raw + r.raw, gzip: t.gzip + r.gzip, brotli: t.brotli + r.brotli }),
  { raw: 0, gzip: 0, brotli: 0 },
);

const line = (r) =>
  `  ${r.file.padEnd(22)}${String(r.raw).padStart(9)} B raw${String(r.gzip).padStart(9)} B gzip${String(r.brotli).padStart(9)} B brotli`;
console.log(`@herald/client on the wire (${pkg}):`);
for (const r of rows) console.log(line(r));
console.log(line(total));
const verdict = `gzip ${total.gzip} B (${kb(total.gzip)}), budget ${limit} B (${kb(limit)})`;
if (total.gzip > limit) {
  console.error(`size.mjs: OVER BUDGET: ${verdict}; shrink the package, or raise gzipBytes in sdk-wasm/size-budget.json if the growth is worth it`);
  process.exit(1);
}
console.log(`  within budget: ${verdict}`);
