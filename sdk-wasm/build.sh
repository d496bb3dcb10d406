#!/usr/bin/env bash
# Builds the npm package @herald/client into sdk-wasm/pkg/:
#   cargo (wasm32-unknown-unknown, profile wasm-release: opt-level "z", LTO)
#   → wasm-bindgen --target web (without the name and producers sections: 129 KB of function
#     names that only a debugger reads)
#   → wasm-opt -O1 --dae-optimizing (binaryen, pinned in sdk-wasm/tools/package-lock.json;
#     `npm ci` there when missing). Not -Oz: it makes the file smaller but compress worse, and
#     gzip is what travels (measured on this module: none 129.2 KB gzip, -Oz 132.3, -O1 127.3,
#     -O1 --dae-optimizing 126.9)
#   + the hand-written wrapper (js/index.js for browsers, js/node.js for Node, both on js/client.js;
#     js/index.d.ts), package.json (the crate's version)
#     and README.md.
# Then prints what the package weighs on the wire (raw, gzip, brotli of the wasm and the glue a
# bundler ships) and fails if the gzipped total is over sdk-wasm/size-budget.json
# (sdk-wasm/tools/size.mjs; HERALD_WASM_SIZE_BUDGET=<bytes> overrides the budget).
# With `--pack DIR`, also runs `npm pack` into DIR and prints the tarball's path last.
#
# Needs: rustup target wasm32-unknown-unknown, and wasm-bindgen-cli at exactly the version of
# the wasm-bindgen crate in Cargo.lock (.ci/run installs both), and node with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

pack_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) pack_dir="$2"; shift 2 ;;
    *) echo "usage: sdk-wasm/build.sh [--pack DIR]" >&2; exit 2 ;;
  esac
done

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$want" != "$have" ]; then
  echo "sdk-wasm/build.sh: wasm-bindgen-cli ${have:-not installed}, Cargo.lock has wasm-bindgen $want;" >&2
  echo "  run: cargo install wasm-bindgen-cli --version =$want --locked" >&2
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-target}"
out=sdk-wasm/pkg
cargo build -p herald-wasm --target wasm32-unknown-unknown --profile wasm-release
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name herald_wasm \
  --remove-name-section --remove-producers-section \
  "$target_dir/wasm32-unknown-unknown/wasm-release/herald_wasm.wasm"

wasm_opt=sdk-wasm/tools/node_modules/.bin/wasm-opt
if [ ! -x "$wasm_opt" ]; then
  (cd sdk-wasm/tools && npm ci --no-audit --no-fund --silent)
fi
"$wasm_opt" -O1 --dae-optimizing "$out/herald_wasm_bg.wasm" -o "$out/herald_wasm_bg.wasm.opt"
mv "$out/herald_wasm_bg.wasm.opt" "$out/herald_wasm_bg.wasm"

version=$(cargo pkgid -p herald-wasm | sed 's/.*[@#]//')
cp sdk-wasm/js/index.js sdk-wasm/js/node.js sdk-wasm/js/client.js sdk-wasm/js/index.d.ts sdk-wasm/README.md "$out/"
sed "s/\"version\": \"0.0.0\"/\"version\": \"$version\"/" sdk-wasm/js/package.json > "$out/package.json"
rm -f "$out/.gitignore"
echo "built $out ($(du -k "$out/herald_wasm_bg.wasm" | cut -f1) KiB of wasm), @herald/client $version"
node sdk-wasm/tools/size.mjs "$out"

if [ -n "$pack_dir" ]; then
  mkdir -p "$pack_dir"
  pack_dir=$(cd "$pack_dir" && pwd)
  tarball=$(cd "$out" && npm pack --silent --pack-destination "$pack_dir")
  echo "$pack_dir/$tarball"
fi
