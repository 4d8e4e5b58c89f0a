#!/usr/bin/env bash
# Builds the static berth-agent (glibc +crt-static, release profile) and prints its path.
# `--target` is mandatory: without it RUSTFLAGS would also apply to proc-macros and the build fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-linux-gnu
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release -p berth-agent --target "$target" >&2
bin="$root/target/$target/release/berth-agent"
# A static binary has no interpreter; refuse to hand out anything else.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-agent: $bin is dynamically linked" >&2
  exit 1
fi
echo "$bin"
