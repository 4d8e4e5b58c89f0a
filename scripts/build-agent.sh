#!/usr/bin/env bash
# Builds the static berth-agent (glibc +crt-static, not position-independent: no start-up relocations
# touching pages; the `agent` profile: built for size) and prints its path.
# `--target` is mandatory: without it RUSTFLAGS would also apply to proc-macros and the build fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-linux-gnu
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --locked --profile agent -p berth-agent --target "$target" >&2
bin="$root/target/$target/agent/berth-agent"
# A static binary has no interpreter; refuse to hand out anything else.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-agent: $bin is dynamically linked" >&2
  exit 1
fi
echo "$bin"
