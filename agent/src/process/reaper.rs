//! PID 1 duties: the agent is its container's init, so orphaned grandchildren become its children and
//! must be reaped, or they pile up as zombies. The reaper only collects zombies it did not spawn itself
//! (those are tracked in the [`Registry`] and waited for by their session), so it never steals an exit
//! status. Outside a container the agent makes itself a child subreaper so the same logic applies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::registry::Registry;

/// How often the reaper sweeps even without a SIGCHLD.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Counts reaped orphans, for stats.
#[derive(Debug, Default)]
pub struct ReaperStats {
    pub reaped: AtomicU64,
}

/// Starts the reaper task.
pub fn start(registry: Arc<Registry>, stats: Arc<ReaperStats>) -> std::io::Result<()> {
    if std::process::id() != 1
        && let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
    {
        tracing::warn!(error = %e, "could not become a child subreaper; orphans will go to the real init");
    }
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            let n = sweep(&registry);
            if n > 0 {
                stats.reaped.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(count = n, "reaped orphaned processes");
            }
        }
    });
    Ok(())
}

/// Reaps every zombie child of ours that no session is waiting for. Returns how many. Only the children
/// no session tracks are looked at (after an exec, usually none: its own child is its session's).
pub fn sweep(registry: &Registry) -> u64 {
    let untracked: Vec<i32> =
        registry.with_children(|tracked| own_child_pids().into_iter().filter(|p| !tracked.contains(p)).collect());
    let zombies: Vec<i32> = untracked.into_iter().filter(|pid| process_state(*pid).as_deref() == Some("Z")).collect();
    if zombies.is_empty() {
        return 0;
    }
    registry.with_children(|tracked| {
        let mut n = 0;
        for pid in zombies.into_iter().filter(|p| !tracked.contains(p)) {
            // SAFETY: waitpid on a specific pid with WNOHANG; the pid is our zombie child, not tracked.
            let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            if rc == pid {
                n += 1;
            }
        }
        n
    })
}

/// `(pid, is_zombie)` of the agent's own children.
pub fn own_children() -> Vec<(i32, bool)> {
    own_child_pids().into_iter().filter_map(|pid| process_state(pid).map(|s| (pid, s == "Z"))).collect()
}

/// The pids of the agent's own children. Reads `/proc/self/task/*/children` (only our children, so it
/// costs the same however many processes the host runs); falls back to a full /proc scan on kernels
/// without that file.
fn own_child_pids() -> Vec<i32> {
    let scan = || children_of(std::process::id() as i32).into_iter().map(|(pid, _)| pid).collect();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return scan() };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(list) => pids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
            Err(_) => return scan(),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The state letter of `pid` from /proc/<pid>/stat (`None` if it is gone).
fn process_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next().map(str::to_string)
}

/// `(pid, is_zombie)` of every process whose parent is `ppid`, by scanning all of /proc.
pub fn children_of(ppid: i32) -> Vec<(i32, bool)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may itself contain spaces or ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let parent = fields.next().and_then(|p| p.parse::<i32>().ok());
        if parent == Some(ppid) {
            out.push((pid, state == "Z"));
        }
    }
    out
}
