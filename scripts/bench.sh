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
# One build of them all (their links run side by side), then each run alone.
cargo bench --locked -p berth-control-plane --bench agent --bench berthd --bench mcp --bench cluster --bench thousand --no-run
# CPU time the hypervisor gave to others while we ran (/proc/stat's steal): on a shared VM the figures
# are only comparable with their same-run baselines, and this says how noisy the run was.
busy_steal() { awk '/^cpu / {print $2+$3+$4+$7+$8, $9}' /proc/stat; }
read -r busy0 steal0 < <(busy_steal)
cargo bench --locked -p berth-control-plane --bench agent
cargo bench --locked -p berth-control-plane --bench berthd
cargo bench --locked -p berth-control-plane --bench mcp
cargo bench --locked -p berth-control-plane --bench cluster
# A thousand idle bots (about 4.5 GiB of memory and 10 minutes; BERTH_BENCH_BOTS=N for fewer).
cargo bench --locked -p berth-control-plane --bench thousand
read -r busy1 steal1 < <(busy_steal)
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); $(date -u +%Y-%m-%d)"
echo "stolen by the hypervisor during the runs: $(( (steal1 - steal0) * 100 / (busy1 - busy0 + steal1 - steal0 + 1) ))% of our busy + stolen CPU time"
