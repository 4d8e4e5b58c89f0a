//! The user cgroup: every process the agent starts joins it between clone and exec, so its memory and
//! pids limits (set by the control plane a reserve below the container's) bind the bot's own work and
//! never the agent. The control plane bind-mounts the cgroup's `cgroup.procs` file(s) into a directory
//! and names it with `--user-cgroup`; the agent opens them once, at start.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

/// The open `cgroup.procs` files; empty when the agent runs without a user cgroup.
static PROCS: OnceLock<Vec<OwnedFd>> = OnceLock::new();

/// Opens every `*.procs` file in `dir` for writing. Called once, before any child is started.
pub fn init(dir: &Path) -> std::io::Result<usize> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "procs") {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            fds.push(OwnedFd::from(file));
        }
    }
    let n = fds.len();
    if PROCS.set(fds).is_err() {
        return Err(std::io::Error::other("the user cgroup was already set up"));
    }
    Ok(n)
}

/// The open `cgroup.procs` descriptors, for a child to join between clone and exec (writing "0" to each
/// moves the writer; see [`super::launch`]).
pub fn raw_fds() -> Vec<RawFd> {
    PROCS.get().map(|fds| fds.iter().map(AsRawFd::as_raw_fd).collect()).unwrap_or_default()
}
