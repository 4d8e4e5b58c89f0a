#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a fixed time each, seeded with the corpus kept in the
# repository (fuzz/corpus/<target>/, never modified here: new inputs go to a scratch directory). Any crash
# fails the run and leaves its input in fuzz/artifacts/<target>/. Usage: scripts/fuzz.sh [SECONDS]
# (default 30, all targets at once); `scripts/fuzz.sh build` only builds them (scripts/test.sh does that
# beside the tests). cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the pinned stable toolchain
# provide them (its sanitizer runtimes ship with it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz: cargo-fuzz is missing: run scripts/install-deps.sh" >&2; exit 1; }
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
[ "$secs" = build ] && exit 0
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# The targets run side by side (the tests are done by now, so both cores are free): the stage takes
# SECONDS of wall time, not SECONDS per target.
targets="$(cargo fuzz list)"
for target in $targets; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${secs} s"
  cargo fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/$target.log" 2>&1 &
  echo $! >"$scratch/$target.pid"
done
failed=0
for target in $targets; do
  if ! wait "$(cat "$scratch/$target.pid")"; then
    tail -40 "$scratch/$target.log" >&2
    echo "fuzz: $target found a crash; the input is in fuzz/artifacts/$target/" >&2
    failed=1
  fi
  grep -E "^Done [0-9]+ runs" "$scratch/$target.log" | sed "s/^/fuzz: $target: /" || true
done
[ "$failed" = 0 ] || exit 1
echo "fuzz: ok"
