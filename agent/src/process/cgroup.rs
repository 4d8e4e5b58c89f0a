//! The user cgroup: every process the agent starts joins it between fork and exec, so its memory and
//! pids limits (set by the control plane a reserve below the container's) bind the bot's own work and
//! never the agent. The control plane bind-mounts the cgroup's `cgroup.procs` file(s) into a directory
//! and names it with `--user-cgroup`; the agent opens them once, at start.

use std::os::fd::{AsRawFd, OwnedFd};
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

/// Moves the calling process into the user cgroup. Only async-signal-safe calls (write): runs between
/// fork and exec.
pub fn join() -> std::io::Result<()> {
    for fd in PROCS.get().map(Vec::as_slice).unwrap_or_default() {
        // "0" is the writing process itself.
        // SAFETY: write(2) on an open descriptor from a static buffer.
        if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
