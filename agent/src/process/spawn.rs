//! Starting a child process: validation, typed spawn errors (a missing binary or a bad cwd fails at once),
//! its own process group (or session, with a pty), and registration with the reaper.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::pty::{self, PtyMaster};
use super::registry::Registry;
use crate::error::{Error, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub argv: Vec<String>,
    /// Host path of the working directory, and how the client named it.
    pub cwd: PathBuf,
    pub cwd_shown: String,
    pub env: Vec<(String, String)>,
    pub clean_env: bool,
    /// Run on a terminal of (rows, cols).
    pub pty: Option<(u16, u16)>,
}

/// The child's end of the conversation.
pub enum ChildIo {
    Pipes { stdin: Option<ChildStdin>, stdout: ChildStdout, stderr: ChildStderr },
    Pty(Arc<PtyMaster>),
}

/// A started child; its pid is also its process group id.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub io: ChildIo,
}

/// Validates and starts `req`.
pub fn spawn(registry: &Registry, req: &SpawnRequest) -> Result<Spawned> {
    let program =
        req.argv.first().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::InvalidArgument("no command given: set argv (program and arguments) or shell".into())
        })?;
    for s in req.argv.iter().chain(req.env.iter().flat_map(|(k, v)| [k, v])) {
        if s.contains('\0') {
            return Err(Error::InvalidArgument(format!("argument or environment entry {s:?} contains a NUL byte")));
        }
    }
    if let Some((k, _)) = req.env.iter().find(|(k, _)| k.is_empty() || k.contains('=')) {
        return Err(Error::InvalidArgument(format!("environment variable name {k:?} is empty or contains `=`")));
    }
    match std::fs::metadata(&req.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::FailedPrecondition(format!("working directory `{}` is not a directory", req.cwd_shown)));
        }
        Err(e) => return Err(Error::io("use working directory", &req.cwd_shown, e)),
    }
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]).current_dir(&req.cwd).kill_on_drop(false);
    if req.clean_env {
        cmd.env_clear();
    }
    if req.pty.is_some() && !req.env.iter().any(|(k, _)| k == "TERM") {
        cmd.env("TERM", "xterm-256color");
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    let (spawned, pid) = match req.pty {
        None => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
            // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    demote_oom_score();
                    super::cgroup::join()
                });
            }
            registry.spawn_tracked(|| {
                let mut child = cmd.spawn()?;
                let pid = child.id().unwrap_or(0);
                let io = ChildIo::Pipes {
                    stdin: child.stdin.take(),
                    stdout: child.stdout.take().ok_or_else(missing_pipe)?,
                    stderr: child.stderr.take().ok_or_else(missing_pipe)?,
                };
                Ok(((child, io), pid))
            })
        }
        Some((rows, cols)) => {
            let pair = pty::open(rows, cols).map_err(|e| Error::io("open a terminal for", program, e))?;
            let dup = || -> Result<Stdio> {
                let fd: OwnedFd =
                    pair.slave.try_clone().map_err(|e| Error::io("duplicate terminal for", program, e))?;
                Ok(Stdio::from(fd))
            };
            cmd.stdin(dup()?).stdout(dup()?).stderr(dup()?);
            // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    demote_oom_score();
                    super::cgroup::join()?;
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let master = PtyMaster::new(pair.master).map_err(|e| Error::io("open a terminal for", program, e))?;
            let r = registry.spawn_tracked(|| {
                let child = cmd.spawn()?;
                let pid = child.id().unwrap_or(0);
                Ok(((child, ChildIo::Pty(master)), pid))
            });
            // The child holds the slave now; ours must close or the master never sees EOF.
            drop(cmd);
            drop(pair.slave);
            r
        }
    }
    .map_err(|e| spawn_error(program, e))?;
    let (child, io) = spawned;
    Ok(Spawned { child, pid, io })
}

/// What the agent's children add to their OOM score: when a bot runs out of memory, the kernel kills one
/// of them, never the agent serving every session.
const CHILD_OOM_SCORE_ADJ: &[u8] = b"500";

/// Between fork and exec: marks the child as the OOM killer's first choice (see [`CHILD_OOM_SCORE_ADJ`]).
/// Raising one's own score needs no privilege (and undoes the -1000 berthd gives the agent where it may).
/// Best effort: a failure leaves the inherited score.
fn demote_oom_score() {
    const PATH: &[u8] = b"/proc/self/oom_score_adj\0";
    // SAFETY: async-signal-safe syscalls on a NUL-terminated constant path and a static buffer.
    unsafe {
        let fd = libc::open(PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            let _ = libc::write(fd, CHILD_OOM_SCORE_ADJ.as_ptr().cast(), CHILD_OOM_SCORE_ADJ.len());
            libc::close(fd);
        }
    }
}

fn missing_pipe() -> std::io::Error {
    std::io::Error::other("child stdio pipe missing")
}

fn spawn_error(program: &str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) if program.contains('/') => {
            Error::NotFound(format!("executable `{program}` does not exist"))
        }
        Some(libc::ENOENT) => Error::NotFound(format!("executable `{program}` not found in PATH")),
        Some(libc::EACCES) => Error::PermissionDenied(format!("`{program}` is not executable (permission denied)")),
        Some(libc::ENOEXEC) => Error::FailedPrecondition(format!("`{program}` is not in an executable format")),
        _ => Error::io("start", program, e),
    }
}
