#!/usr/bin/env bash
# Benchmarks (not tests): builds the static agent and runs the benchmark binaries, which print their
# figures and write target/bench/*.{json,md}. Each figure is paired with a baseline from the same run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh >/dev/null
BERTH_AGENT_BIN="$(bash scripts/build-agent.sh)"; export BERTH_AGENT_BIN
BERTH_TEST_IMAGE="$(bash scripts/build-image.sh minimal)"; export BERTH_TEST_IMAGE
BERTH_FULL_IMAGE="$(bash scripts/build-image.sh full)"; export BERTH_FULL_IMAGE
cargo bench --locked -p berth-control-plane --bench agent
cargo bench --locked -p berth-control-plane --bench berthd
cargo bench --locked -p berth-control-plane --bench mcp
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); $(date -u +%Y-%m-%d)"
