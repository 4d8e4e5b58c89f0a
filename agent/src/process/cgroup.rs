//! The user cgroup: every process the agent starts joins it between clone and exec, so its memory and
//! pids limits (set by the control plane a reserve below the container's) bind the bot's own work and
//! never the agent.
//!
//! The agent holds the cgroup's `cgroup.procs` files open for writing; no path to them exists in the
//! container, so the bot's own processes (root, like the agent) cannot move anything, the agent
//! included, between cgroups. Two ways in:
//! - [`receive`] (what berthd uses, `--user-cgroup-from SOCKET`): the agent listens on a Unix socket once,
//!   before it serves anything, and takes the descriptors berthd opened on the host (SCM_RIGHTS); then
//!   it closes the listener and removes the socket.
//! - [`init`] (`--user-cgroup DIR`, for running the agent by hand): opens every `*.procs` file in `DIR`.

use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_proto::agent::{USER_CGROUP_HELLO as HANDOFF_HELLO, USER_CGROUP_MAX_FDS as HANDOFF_MAX_FDS};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// The open `cgroup.procs` files; empty when the agent runs without a user cgroup.
static PROCS: OnceLock<Vec<OwnedFd>> = OnceLock::new();

/// cgroup v1 and v2 file system magic numbers (`statfs(2)`).
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

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
    set(fds)
}

fn set(fds: Vec<OwnedFd>) -> std::io::Result<usize> {
    let n = fds.len();
    if PROCS.set(fds).is_err() {
        return Err(std::io::Error::other("the user cgroup was already set up"));
    }
    Ok(n)
}

/// Listens on `socket` until one connection hands over the user cgroup's `cgroup.procs` descriptors
/// (at most `wait`), checks that each is a cgroup file open for writing, answers `ok` (or what was
/// wrong, and waits for the next attempt), then removes the socket. Called once, before serving.
pub fn receive(socket: &Path, wait: Duration) -> std::io::Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket() || m.file_type().is_symlink()) {
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    let deadline = Instant::now() + wait;
    let result = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nobody handed over the user cgroup within {} s", wait.as_secs()),
            ));
        };
        if !readable(&listener, left)? {
            continue;
        }
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        match take_descriptors(&conn) {
            Ok(fds) => {
                let _ = conn.write_all(b"ok\n");
                break Ok(fds);
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a user cgroup handoff");
                let _ = conn.write_all(format!("error: {e}\n").as_bytes());
            }
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(socket);
    set(result?)
}

/// Waits up to `timeout` for a connection to accept.
fn readable(listener: &UnixListener, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    match n {
        n if n < 0 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Reads one handoff message and checks its descriptors.
fn take_descriptors(conn: &std::os::unix::net::UnixStream) -> std::io::Result<Vec<OwnedFd>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut buf = [0u8; 64];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDOFF_MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(conn, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(invalid(format!("more than {HANDOFF_MAX_FDS} descriptors")));
    }
    if buf.get(..got.bytes) != Some(HANDOFF_HELLO) {
        return Err(invalid("not a berth user cgroup handoff".into()));
    }
    if fds.is_empty() {
        return Err(invalid("no descriptors".into()));
    }
    for fd in &fds {
        let fs = rustix::fs::fstatfs(fd)?;
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
        let magic = fs.f_type as i64;
        if magic != CGROUP_SUPER_MAGIC && magic != CGROUP2_SUPER_MAGIC {
            return Err(invalid(format!("a descriptor is not on a cgroup file system (magic {magic:#x})")));
        }
        let mode = rustix::fs::fcntl_getfl(fd)? & rustix::fs::OFlags::RWMODE;
        if mode == rustix::fs::OFlags::RDONLY {
            return Err(invalid("a descriptor is not open for writing".into()));
        }
    }
    Ok(fds)
}

/// The open `cgroup.procs` descriptors, for a child to join between clone and exec (writing "0" to each
/// moves the writer; see [`super::launch`]).
pub fn raw_fds() -> Vec<RawFd> {
    PROCS.get().map(|fds| fds.iter().map(AsRawFd::as_raw_fd).collect()).unwrap_or_default()
}
