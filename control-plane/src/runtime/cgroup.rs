//! The user cgroup: a child of a bot's container cgroup that everything the agent starts runs in, with
//! memory and pids limits a reserve below the container's. An OOM or a fork bomb then hits the bot's own
//! work, never the agent (PID 1), which keeps serving and can kill the offender.
//!
//! berthd creates the cgroup before the task and sets its limits once the task runs, from the container's
//! own limits as the kernel reports them. Its `cgroup.procs` files are never visible in the container (a
//! bot could move any of its processes, the agent included): berthd opens them on the host
//! ([`open_user_procs`]) and hands the descriptors to the agent, which joins each child to the cgroup by
//! writing to them between clone and exec. Both cgroup v1 (the memory and pids hierarchies) and
//! v2 (unified; the agent moves to an `agent` leaf first, as v2 allows no processes in a cgroup whose
//! controllers are delegated) are handled.

use std::path::{Path, PathBuf};

use super::RuntimeError;

/// Where cgroup hierarchies are mounted on the host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Memory the agent keeps for itself: an eighth of the container's limit, within these bounds.
const MEMORY_RESERVE_MIN: u64 = 8 << 20;
const MEMORY_RESERVE_MAX: u64 = 64 << 20;
/// Processes (and threads) the agent keeps for itself: an eighth of the limit, within these bounds.
const PIDS_RESERVE_MIN: u64 = 8;
const PIDS_RESERVE_MAX: u64 = 64;

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// cgroup v2 only.
    Unified,
    /// cgroup v1 controllers (memory and pids are the ones used here).
    Legacy,
}

fn layout() -> Layout {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() { Layout::Unified } else { Layout::Legacy }
}

/// The container's cgroup path below each hierarchy's root, as the spec gives it to runc.
pub fn container_path(namespace: &str, id: &str) -> String {
    format!("berth/{namespace}/{id}")
}

/// The container cgroup directories (one per hierarchy used).
fn container_dirs(namespace: &str, id: &str) -> Vec<PathBuf> {
    let rel = container_path(namespace, id);
    match layout() {
        Layout::Unified => vec![Path::new(CGROUP_ROOT).join(rel)],
        Layout::Legacy => ["memory", "pids"].iter().map(|c| Path::new(CGROUP_ROOT).join(c).join(&rel)).collect(),
    }
}

/// Opens the user cgroup's `cgroup.procs` file in each hierarchy for writing (host paths under
/// [`CGROUP_ROOT`], which no bot can write: its `/sys/fs/cgroup` is read-only).
pub fn open_user_procs(namespace: &str, id: &str) -> Result<Vec<std::os::fd::OwnedFd>, RuntimeError> {
    container_dirs(namespace, id)
        .into_iter()
        .map(|d| {
            let path = d.join("user/cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map(std::os::fd::OwnedFd::from)
                .map_err(|e| io(format!("open {} for the agent", path.display()), e))
        })
        .collect()
}

fn io(op: String, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io { op, source }
}

/// Creates the container's cgroup and its user child (before the task, so the bind mounts have sources).
pub fn prepare(namespace: &str, id: &str) -> Result<(), RuntimeError> {
    for dir in container_dirs(namespace, id) {
        let user = dir.join("user");
        std::fs::create_dir_all(&user).map_err(|e| io(format!("create cgroup {}", user.display()), e))?;
    }
    Ok(())
}

/// Sets the user cgroup's limits below the running container's (task `pid` is its PID 1).
pub fn apply(namespace: &str, id: &str, pid: u32) -> Result<(), RuntimeError> {
    let dirs = container_dirs(namespace, id);
    match layout() {
        Layout::Legacy => {
            let (memory, pids) = (&dirs[0], &dirs[1]);
            if let Some(limit) = read_limit(&memory.join("memory.limit_in_bytes"))? {
                let user = limit.saturating_sub(memory_reserve(limit));
                write(&memory.join("user/memory.limit_in_bytes"), user)?;
                // With swap accounting, memory+swap too (it may not be below the memory limit).
                let memsw = memory.join("user/memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, user)?;
                }
            }
            if let Some(limit) = read_limit(&pids.join("pids.max"))? {
                write(&pids.join("user/pids.max"), limit.saturating_sub(pids_reserve(limit)))?;
            }
        }
        Layout::Unified => {
            let dir = &dirs[0];
            // v2 allows no process in a cgroup that delegates controllers: PID 1 moves to a leaf first.
            let agent = dir.join("agent");
            std::fs::create_dir_all(&agent).map_err(|e| io(format!("create cgroup {}", agent.display()), e))?;
            std::fs::write(agent.join("cgroup.procs"), pid.to_string())
                .map_err(|e| io(format!("move the agent into {}", agent.display()), e))?;
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids")
                .map_err(|e| io(format!("delegate memory and pids below {}", dir.display()), e))?;
            if let Some(limit) = read_limit(&dir.join("memory.max"))? {
                let user = limit.saturating_sub(memory_reserve(limit));
                write(&dir.join("user/memory.max"), user)?;
                let swap = dir.join("user/memory.swap.max");
                if swap.exists() {
                    write(&swap, 0)?;
                }
            }
            if let Some(limit) = read_limit(&dir.join("pids.max"))? {
                write(&dir.join("user/pids.max"), limit.saturating_sub(pids_reserve(limit)))?;
            }
        }
    }
    Ok(())
}

/// Removes the container's cgroups once its task is gone (children first; what is already gone is
/// skipped). A cgroup that still holds processes stays, with a warning.
pub fn remove(namespace: &str, id: &str) {
    for dir in container_dirs(namespace, id) {
        for d in [dir.join("user"), dir.join("agent"), dir] {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove a bot's cgroup"),
            }
        }
    }
}

fn memory_reserve(limit: u64) -> u64 {
    (limit / 8).clamp(MEMORY_RESERVE_MIN, MEMORY_RESERVE_MAX)
}

fn pids_reserve(limit: u64) -> u64 {
    (limit / 8).clamp(PIDS_RESERVE_MIN, PIDS_RESERVE_MAX)
}

/// A limit file's value; `None` when unlimited ("max", or v1's page-rounded i64::MAX).
fn read_limit(path: &Path) -> Result<Option<u64>, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(format!("read {}", path.display()), e))?;
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let n: u64 = text.parse().map_err(|_| {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected value {text:?}"));
        io(format!("read {}", path.display()), bad)
    })?;
    Ok((n < (1 << 62)).then_some(n))
}

fn write(path: &Path, value: u64) -> Result<(), RuntimeError> {
    std::fs::write(path, value.to_string()).map_err(|e| io(format!("write {value} to {}", path.display()), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reserves_are_an_eighth_within_bounds() {
        assert_eq!(memory_reserve(64 << 20), 8 << 20);
        assert_eq!(memory_reserve(16 << 20), 8 << 20);
        assert_eq!(memory_reserve(256 << 20), 32 << 20);
        assert_eq!(memory_reserve(8 << 30), 64 << 20);
        assert_eq!(pids_reserve(64), 8);
        assert_eq!(pids_reserve(10), 8);
        assert_eq!(pids_reserve(10_000), 64);
    }

    #[test]
    fn unlimited_values_read_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        for (text, want) in [("max\n", None), ("9223372036854771712\n", None), ("67108864\n", Some(64 << 20))] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(read_limit(&f).unwrap(), want, "{text}");
        }
        std::fs::write(&f, "junk").unwrap();
        assert!(read_limit(&f).is_err());
    }
}
