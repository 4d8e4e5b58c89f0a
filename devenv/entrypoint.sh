#!/usr/bin/env bash
# berthd's entrypoint in the devenv compose service: prepares cgroups and directories, starts a private
# containerd, then berthd (configured by BERTH_* variables), and on SIGTERM stops berthd, then containerd.
# With arguments it runs them instead (the compose `migrate` step runs `berthd --migrate`).
#
# It also runs natively, outside any container (the test suite does so): every path it uses can be moved
# with a variable, and the cgroup step only acts when it is PID 1 of a cgroup v2 container.
#   BERTH_CONTAINERD_ROOT   containerd's root (images, snapshots)      default /var/lib/containerd
#   BERTH_CONTAINERD_STATE  containerd's state and socket directory    default /run/containerd
#   BERTH_STATE_DIR, BERTH_RUN_DIR, and every other BERTH_* setting: see `berthd --print-default-config`.
set -euo pipefail

if [ "$#" -gt 0 ]; then exec "$@"; fi

log() { echo "berth-entrypoint: $*" >&2; }

ctd_root="${BERTH_CONTAINERD_ROOT:-/var/lib/containerd}"
ctd_state="${BERTH_CONTAINERD_STATE:-/run/containerd}"
export BERTH_CONTAINERD_SOCKET="${BERTH_CONTAINERD_SOCKET:-$ctd_state/containerd.sock}"
export BERTH_STATE_DIR="${BERTH_STATE_DIR:-/var/lib/berth}"
export BERTH_RUN_DIR="${BERTH_RUN_DIR:-/run/berth}"

# cgroup v2 in a container: the root of our cgroup namespace may not hold processes once controllers are
# delegated to children (runc's bot cgroups), so move everything into a leaf and delegate all controllers.
if [ "$$" = 1 ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mkdir -p /sys/fs/cgroup/init
  while read -r pid; do echo "$pid" > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true; done < /sys/fs/cgroup/cgroup.procs
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || log "cannot delegate the $c controller"
  done
fi

mkdir -p "$ctd_root" "$ctd_state" "$BERTH_STATE_DIR" "$BERTH_RUN_DIR"
# Bots reach beyond their bridge only if the host forwards; the CNI bridge plugin enables it too.
if [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo 1)" != 1 ]; then
  echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null || log "cannot enable IPv4 forwarding; bots stay on their bridge"
fi

cat > "$ctd_state/config.toml" <<TOML
version = 2
root = "$ctd_root"
state = "$ctd_state/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$BERTH_CONTAINERD_SOCKET"
[ttrpc]
  address = "$BERTH_CONTAINERD_SOCKET.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctd_root/opt"
TOML

berthd_pid=""
ctd_pid=""
stop() {
  trap - TERM INT
  log "stopping berthd, then containerd"
  [ -n "$berthd_pid" ] && kill -TERM "$berthd_pid" 2>/dev/null && wait "$berthd_pid" 2>/dev/null || true
  [ -n "$ctd_pid" ] && kill -TERM "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null || true
  log "stopped"
  exit 0
}
trap stop TERM INT

containerd --config "$ctd_state/config.toml" &
ctd_pid=$!
for _ in $(seq 300); do
  ctr --address "$BERTH_CONTAINERD_SOCKET" version >/dev/null 2>&1 && break
  kill -0 "$ctd_pid" 2>/dev/null || { log "containerd exited at start"; exit 1; }
  sleep 0.1
done
ctr --address "$BERTH_CONTAINERD_SOCKET" version >/dev/null 2>&1 || { log "containerd did not answer within 30 s"; exit 1; }
log "containerd is up ($BERTH_CONTAINERD_SOCKET)"

berthd &
berthd_pid=$!
# Whichever ends first ends the service: the compose restart policy brings it back.
set +e
wait -n "$berthd_pid" "$ctd_pid"
rc=$?
set -e
if ! kill -0 "$berthd_pid" 2>/dev/null; then
  log "berthd exited ($rc); stopping containerd"
  berthd_pid=""
else
  log "containerd exited ($rc); stopping berthd"
  ctd_pid=""
fi
[ -n "$berthd_pid" ] && kill -TERM "$berthd_pid" 2>/dev/null && wait "$berthd_pid" 2>/dev/null
[ -n "$ctd_pid" ] && kill -TERM "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
exit "${rc:-1}"
