//! Tasks known to be running, so that asking "is it running, with which pid?" need not cost a containerd
//! round trip each time. containerd answers `Tasks.Get` by asking the shim, and the runc shim asks runc (a
//! process started per call): under many callers that, not berthd, is what reading a bot costs.
//!
//! A task enters when containerd reports it running, with its pid and the start time of that process
//! (`/proc/<pid>/stat`, field 22), and only if `/proc/<pid>/cgroup` places the process in the container's
//! own cgroup: that proves berthd sees the same pids and cgroups as containerd (in a container of its own
//! it may not, and then nothing is cached and every answer comes from containerd). A cached answer is
//! given only while a process with that pid and that start time is alive and not a zombie; the task's
//! init cannot outlive its task, so such a process means the task still runs. Anything else (the process
//! gone, a reused pid, `/proc` unreadable) drops the entry and asks containerd. Start, stop and delete
//! drop the entry too. The residual risk, a pid reused by another process started in the same clock
//! tick (10 ms) as the task's init, is accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A running task as containerd last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    pid: u32,
    start_time: u64,
}

/// The running tasks of one containerd namespace; shared by the clones of a connection.
#[derive(Debug, Clone, Default)]
pub struct LiveTasks {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl LiveTasks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // A panic while holding the lock leaves a consistent map (every operation is one insert or remove).
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid of container `id`'s task if it is known to be running and its init process still is.
    pub fn pid(&self, id: &str) -> Option<u32> {
        let seen = *self.map().get(id)?;
        match process_start_time(seen.pid) {
            Some(t) if t == seen.start_time => Some(seen.pid),
            _ => {
                self.forget(id);
                None
            }
        }
    }

    /// Records that containerd reported container `id`'s task running as `pid` (cgroup path `cgroup`).
    pub fn record(&self, id: &str, pid: u32, cgroup: &str) {
        let Some(start_time) = process_start_time(pid) else { return };
        if !in_cgroup(pid, cgroup) {
            tracing::debug!(container.id = id, pid, "the task's process is not visible here; not caching its state");
            return;
        }
        // The process may have died and its pid been reused between the two reads: read again.
        if process_start_time(pid) == Some(start_time) {
            self.map().insert(id.to_string(), Seen { pid, start_time });
        }
    }

    /// Forgets container `id`'s task (it is being started, stopped or deleted).
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// The start time (clock ticks since boot) of a live, non-zombie process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// From a `/proc/<pid>/stat` line: the start time, unless the process is a zombie or dead. The command
/// name (field 2) is in parentheses and may itself hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    // After the state (field 3) come fields 4..; the start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// Whether process `pid` is in cgroup `rel` (relative to a hierarchy's root) or below it, in any hierarchy.
fn in_cgroup(pid: u32, rel: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| lists_cgroup(&text, rel))
}

/// Whether a `/proc/<pid>/cgroup` text places the process in `rel` or below it.
fn lists_cgroup(text: &str, rel: &str) -> bool {
    let want = format!("/{}", rel.trim_start_matches('/'));
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| path == want || path.strip_prefix(want.as_str()).is_some_and(|below| below.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_counted_after_the_command_name() {
        let line = "4242 (a (tricky) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 3000000 200";
        assert_eq!(parse_stat(line), Some(987654));
    }

    #[test]
    fn zombies_and_garbage_have_no_start_time() {
        let z = "7 (sh) Z 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 555 0 0";
        assert_eq!(parse_stat(z), None);
        assert_eq!(parse_stat("no parentheses here"), None);
        assert_eq!(parse_stat("1 (short) S 1 2"), None);
    }

    #[test]
    fn this_process_is_seen_alive_with_a_stable_start_time() {
        let me = std::process::id();
        let t = process_start_time(me).expect("our own start time");
        assert!(t > 0);
        assert_eq!(process_start_time(me), Some(t));
        assert!(!in_cgroup(me, "berth/no-such-namespace/no-such-bot"));
    }

    #[test]
    fn a_cgroup_matches_itself_and_its_children_in_any_hierarchy() {
        let v1 = "9:name=systemd:/\n8:pids:/berth/ns/bot-1\n4:memory:/berth/ns/bot-1\n0::/";
        assert!(lists_cgroup(v1, "berth/ns/bot-1"));
        assert!(lists_cgroup(v1, "/berth/ns/bot-1"));
        let v2 = "0::/berth/ns/bot-1/agent";
        assert!(lists_cgroup(v2, "berth/ns/bot-1"));
        assert!(!lists_cgroup(v2, "berth/ns/bot"), "a sibling whose name extends ours is not ours");
        assert!(!lists_cgroup(v2, "berth/ns/bot-1/agent/deeper"));
        assert!(!lists_cgroup("0::/", "berth/ns/bot-1"));
    }

    #[test]
    fn an_entry_whose_process_is_gone_is_dropped() {
        let live = LiveTasks::default();
        // A process that has exited and been reaped: its pid is (almost surely) not reused at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        live.map().insert("gone".into(), Seen { pid, start_time: 1 });
        assert_eq!(live.pid("gone"), None);
        assert!(live.map().is_empty());
        // A live process with a different start time (a reused pid) is not the task either.
        let me = std::process::id();
        live.map().insert("reused".into(), Seen { pid: me, start_time: u64::MAX });
        assert_eq!(live.pid("reused"), None);
    }
}
