#!/usr/bin/env bash
# Builds every fuzz target (libFuzzer + AddressSanitizer through cargo fuzz, on the
# stable toolchain with RUSTC_BOOTSTRAP=1) and runs each for a bounded time.
# Usage: fuzz/run.sh [seconds per target, default 20]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build --release
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${secs}s"
  log="$(mktemp)"
  if ! cargo fuzz run --release "$target" -- -max_total_time="$secs" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target failed (crash input under fuzz/artifacts/$target)" >&2
    exit 1
  fi
  tail -n 1 "$log"
  rm -f "$log"
done
