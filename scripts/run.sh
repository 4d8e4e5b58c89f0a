#!/usr/bin/env bash
# Sets up and runs Berth on this machine: installs what is missing, builds berthd, the berth CLI, the
# static agent and the minimal bot image, starts a private containerd (its own root, on a loop-mounted
# btrfs image for disk quotas, state and socket under ./.run) and berthd on SQLite, and prints how to
# connect. berthd is supervised: if it dies it is started again (with backoff, logged) and the bots keep
# running. Ctrl-C stops everything cleanly: berthd, the bots' tasks (their data stays), and the private
# containerd. `berth` and `berthd` are linked into ./.run/bin. BERTH_BIN_DIR=DIR takes them from DIR
# instead of a release build (scripts/tour.sh passes the test suite's build, which it already has).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh run
if [ -n "${BERTH_BIN_DIR:-}" ]; then
  bin="$(cd "$BERTH_BIN_DIR" && pwd)"
else
  cargo build --locked --release -p berth-control-plane --bin berth --bin berthd
  bin="$root/target/release"
fi
agent="$(bash scripts/build-agent.sh)"
image="$(BERTH_AGENT_BIN="$agent" bash scripts/build-image.sh minimal)"

run="$root/.run"
ctd="$run/containerd"
ns=berth
mkdir -p "$ctd" "$run/state" "$run/run" "$run/bin"
ln -sfn "$bin/berth" "$run/bin/berth"
ln -sfn "$bin/berthd" "$run/bin/berthd"

# containerd's root on btrfs, so every bot gets a hard disk quota (a qgroup on its writable layer): a
# sparse image file, loop-mounted, sized half the free space here (at most 256 GiB; BERTH_ROOT_SIZE, e.g.
# 100G, overrides). A root that already holds an older, non-btrfs setup is kept as it is: bots then run
# without a disk quota (`berth bot get` says disk_quota_enforced: false).
img="$run/containerd-root.btrfs"
mkdir -p "$ctd/root"
if ! mountpoint -q "$ctd/root"; then
  if [ ! -f "$img" ] && [ -z "$(ls -A "$ctd/root")" ]; then
    free_kib=$(df -Pk "$run" | awk 'NR==2 {print $4}')
    size="${BERTH_ROOT_SIZE:-$(( free_kib / 2 / 1024 / 1024 < 256 ? free_kib / 2 / 1024 / 1024 : 256 ))G}"
    truncate -s "$size" "$img" && mkfs.btrfs -q "$img" >/dev/null || { rm -f "$img"; echo "run.sh: no btrfs image: bots get no disk quota" >&2; }
  fi
  # Only onto an empty root: one an earlier run filled without the image stays as it is.
  if [ -f "$img" ] && [ -z "$(ls -A "$ctd/root")" ]; then
    if ! mount -o loop,discard "$img" "$ctd/root"; then
      echo "run.sh: cannot mount $img: bots get no disk quota" >&2
    elif ! btrfs quota enable "$ctd/root"; then
      echo "run.sh: cannot turn on btrfs quotas on $img: bots get no disk quota" >&2
    fi
  fi
fi
cat > "$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctd/containerd.sock"
[ttrpc]
  address = "$ctd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctd/opt"
TOML

stopping=0
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  echo "stopping berthd, the bots' tasks and containerd..."
  [ -n "${berthd_pid:-}" ] && kill -TERM "$berthd_pid" 2>/dev/null && wait "$berthd_pid" 2>/dev/null || true
  if [ -S "$ctd/containerd.sock" ]; then
    for t in $(ctr -a "$ctd/containerd.sock" -n "$ns" tasks ls -q); do
      ctr -a "$ctd/containerd.sock" -n "$ns" tasks kill -s SIGTERM "$t" >/dev/null 2>&1 || true
    done
    sleep 2
    for t in $(ctr -a "$ctd/containerd.sock" -n "$ns" tasks ls -q); do
      ctr -a "$ctd/containerd.sock" -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr -a "$ctd/containerd.sock" -n "$ns" tasks delete -f "$t" >/dev/null || echo "could not remove the task of $t" >&2
    done
  fi
  [ -n "${ctd_pid:-}" ] && kill -TERM "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null || true
  if mountpoint -q "$ctd/root"; then umount "$ctd/root" 2>/dev/null || umount -l "$ctd/root" || true; fi
  echo "stopped. Bots and their data are kept in $run; run scripts/run.sh again to continue."
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# Own sessions: a terminal's Ctrl-C reaches only this script, whose trap then stops things in order.
setsid containerd --config "$ctd/config.toml" >"$ctd/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do [ -S "$ctd/containerd.sock" ] && break; sleep 0.1; done
[ -S "$ctd/containerd.sock" ] || { echo "containerd did not start; see $ctd/containerd.log" >&2; exit 1; }

start_berthd() {
  setsid "$run/bin/berthd" --containerd-socket "$ctd/containerd.sock" --namespace "$ns" \
    --state-dir "$run/state" --run-dir "$run/run" --image-archive "$image" >>"$run/berthd.log" 2>&1 &
  berthd_pid=$!
  berthd_started=$(date +%s)
}
start_berthd
for _ in $(seq 150); do [ -S "$run/run/berthd.sock" ] && break; sleep 0.1; done
[ -S "$run/run/berthd.sock" ] || { echo "berthd did not start; see $run/berthd.log" >&2; exit 1; }

cat <<MSG
Berth is running (berthd log: $run/berthd.log). In another shell:

  export BERTH_ADDR=$run/run/berthd.sock PATH=$run/bin:\$PATH
  berth bot create demo --memory 512M
  berth exec demo -- sh -c 'echo hello from \$(hostname)'
  berth exec -it demo -- sh
  berth bot ls

MCP clients reach a bot's registered servers with \`berth mcp BOT SERVER\` (stdio; set BERTH_ADDR as
above), or over Streamable HTTP when berthd runs with mcp_listen and api_token_file (see README.md).

Ctrl-C here stops everything. If berthd dies it is restarted; the bots keep running.
MSG
# Supervision: a berthd that exits is started again (1 s, doubling to 30 s while it keeps failing within
# a minute of its start); the bots' tasks are never touched.
backoff=1
while :; do
  rc=0
  wait "$berthd_pid" || rc=$?
  [ "$stopping" = 1 ] && break
  if (( $(date +%s) - berthd_started > 60 )); then backoff=1; fi
  echo "run.sh: berthd exited (status $rc); starting it again in ${backoff}s; the bots keep running (log: $run/berthd.log)" >&2
  sleep "$backoff"
  backoff=$(( backoff < 30 ? backoff * 2 : 30 ))
  start_berthd
done
