#!/usr/bin/env bash
# Sets up and runs Berth on this machine. Today that is the in-container agent, run directly on the host
# against a private root (./.run/root) so you can drive it with the `berth` CLI; `berthd` with its private
# containerd and SQLite replaces this once the control plane lands. Ctrl-C stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
cargo build --locked --release -p berth-control-plane --bin berth
agent="$(bash scripts/build-agent.sh)"
run="$root/.run"
mkdir -p "$run/root/data"
[ -s "$run/token" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/token"; chmod 600 "$run/token"; }
berth="$root/target/release/berth"
cat <<MSG
berth-agent is starting on $run/agent.sock (root: $run/root, data: /data). In another shell:

  $berth agent --socket $run/agent.sock --token-file $run/token version
  $berth agent --socket $run/agent.sock --token-file $run/token exec -- sh -c 'echo hello from \$(pwd)'
  $berth agent --socket $run/agent.sock --token-file $run/token exec -it -- sh

MSG
exec "$agent" --socket "$run/agent.sock" --token-file "$run/token" --root "$run/root"
