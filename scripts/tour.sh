#!/usr/bin/env bash
# Runs the README's five-minute tour verbatim, as a new user would: starts `scripts/run.sh`, takes the
# commands from the tour's code block, runs them one by one in one shell (each must succeed; the
# interactive one gets a real terminal from `script` and types `exit`), then stops run.sh as Ctrl-C
# would (with SIGTERM) and checks it stopped cleanly. In between, it SIGKILLs berthd and checks run.sh
# starts it again while a bot keeps its processes. Part of scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -e .run ]; then
  echo "tour: ./.run exists (left by an earlier scripts/run.sh); move it away: the tour starts as on a fresh machine" >&2
  exit 1
fi
work="$(mktemp -d)"
log="$work/run.log"

# The tour's commands: the first ```sh block after the heading.
awk '/^## A five-minute tour/{t=1} t&&/^```sh/{b=1;next} b&&/^```/{exit} b{print}' README.md > "$work/tour.txt"
[ -s "$work/tour.txt" ] || { echo "tour: no commands found in README.md" >&2; exit 1; }

# The binaries the test suite built (scripts/test.sh), not a second, release build of the same code.
BERTH_BIN_DIR="${BERTH_BIN_DIR:-$root/target/debug}" setsid bash scripts/run.sh >"$log" 2>&1 &
run_pid=$!
stop_run() {
  # SIGTERM: run.sh stops as on Ctrl-C (a background job ignores SIGINT, so that cannot be sent here).
  kill -TERM "$run_pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$run_pid" 2>/dev/null; then
    echo "tour: scripts/run.sh did not stop within 30 s of SIGTERM" >&2
    kill -KILL -- "-$run_pid" 2>/dev/null || true
    pkill -KILL -f "$root/.run/" 2>/dev/null || true
    return 1
  fi
}
trap 'stop_run || true; rm -rf "$work"' EXIT
for _ in $(seq 1800); do
  grep -q "Berth is running" "$log" && break
  kill -0 "$run_pid" 2>/dev/null || { echo "tour: scripts/run.sh exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.5
done
grep -q "Berth is running" "$log" || { echo "tour: scripts/run.sh did not come up in 15 min" >&2; cat "$log" >&2; exit 1; }

# One shell for the whole tour (the first line exports BERTH_ADDR and PATH).
# Each line's status is what a user would see at the prompt: the last command's (so `cmd; echo $?` is fine).
{
  echo 'set -o pipefail'
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    printf 'echo %q\n' "\$ $line"
    if [[ "$line" == *" -it "* ]]; then
      # A terminal for the interactive shell, which is told to exit.
      printf 'echo exit | script -qec %q /dev/null\n' "${line%%#*}"
    else
      printf '%s\n' "$line"
    fi
    printf 'rc=$?; [ "$rc" = 0 ] || { echo "tour: exit status $rc from: "%q >&2; exit 1; }\n' "$line"
  done < "$work/tour.txt"
} > "$work/tour.sh"
if ! bash "$work/tour.sh" </dev/null; then
  echo "tour: a command of the README's tour failed; berthd's log:" >&2
  tail -50 .run/berthd.log >&2 || true
  exit 1
fi

# run.sh supervises berthd: SIGKILL it, and it is started again while a bot keeps its processes.
export BERTH_ADDR="$root/.run/run/berthd.sock"
berth="$root/.run/bin/berth"
"$berth" bot create survivor >/dev/null
pid_of() { "$berth" bot get survivor --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }
before="$(pid_of)"
pkill -KILL -f "$root/.run/bin/berthd --containerd-socket"
for _ in $(seq 300); do
  grep -q "run.sh: berthd exited" "$log" && "$berth" bot ls >/dev/null 2>&1 && break
  sleep 0.1
done
grep -q "run.sh: berthd exited (status 137)" "$log" || { echo "tour: run.sh did not notice berthd's death:" >&2; cat "$log" >&2; exit 1; }
after="$(pid_of)"
[ -n "$before" ] && [ "$before" = "$after" ] || { echo "tour: the bot's agent changed across berthd's restart ($before -> $after)" >&2; exit 1; }
"$berth" exec survivor -- true
"$berth" bot rm survivor >/dev/null
echo "tour: berthd killed and restarted by run.sh; the bot kept its agent (pid $after)"

trap 'rm -rf "$work"' EXIT
stop_run
grep -q "stopped. Bots and their data are kept" "$log" || { echo "tour: run.sh did not stop cleanly:" >&2; cat "$log" >&2; exit 1; }
echo "tour: ok ($(wc -l < "$work/tour.txt") commands)"
