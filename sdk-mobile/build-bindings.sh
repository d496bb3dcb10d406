#!/usr/bin/env bash
# Builds herald-mobile's native library (cdylib) for this machine and generates its Kotlin and
# Swift bindings from it (uniffi library mode), in one step.
#
#   sdk-mobile/build-bindings.sh            # debug build
#   sdk-mobile/build-bindings.sh --release  # optimised build
#
# Output (sdk-mobile/generated/, not versioned):
#   lib/libherald_mobile.{so,dylib}     the native library (JNA: -Djna.library.path=<this dir>)
#   kotlin/herald/mobile/herald_mobile.kt
#   swift/HeraldMobile.swift, swift/HeraldMobileFFI.h, swift/HeraldMobileFFI.modulemap
#
# Cross-compiling for Android or iOS is not done here (see sdk-mobile/README.md): the bindings
# do not depend on the target, only the native library does.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
case "${1:-}" in
  "") ;;
  --release) profile=release; cargo_profile=(--release) ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

case "$(uname -s)" in
  Darwin) lib_file=libherald_mobile.dylib ;;
  *) lib_file=libherald_mobile.so ;;
esac

target_dir="${CARGO_TARGET_DIR:-target}"
out=sdk-mobile/generated

echo "==> cargo build -p herald-mobile (${profile}): native library and uniffi-bindgen"
cargo build "${cargo_profile[@]}" -p herald-mobile --features cli --lib --bin uniffi-bindgen

lib="$target_dir/$profile/$lib_file"
[ -f "$lib" ] || { echo "error: $lib was not built" >&2; exit 1; }

rm -rf "$out/kotlin" "$out/swift" "$out/lib"
mkdir -p "$out/lib"
# A hard link costs nothing (the debug library is >100 MB); copy across file systems.
ln -f "$lib" "$out/lib/$lib_file" 2>/dev/null || cp "$lib" "$out/lib/$lib_file"

for language in kotlin swift; do
  echo "==> uniffi-bindgen generate --language $language"
  # --no-format: ktlint and swift-format are not installed here; the output is valid as is.
  cargo run -q "${cargo_profile[@]}" -p herald-mobile --features cli --bin uniffi-bindgen -- \
    generate --library "$lib" --language "$language" --out-dir "$out/$language" --no-format
done

echo "==> generated:"
find "$out" -type f | sort
