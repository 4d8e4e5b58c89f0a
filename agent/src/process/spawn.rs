//! Starting a child process: validation, typed spawn errors (a missing binary or a bad cwd fails at once),
//! its own process group (or session, with a pty), and registration with the reaper.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::launch::{Child, ChildFds, Launch, Leader, Step};
use super::pty::{self, PtyMaster};
use super::registry::Registry;
use crate::error::{Error, Result};

/// The agent's end of a child's stdin.
pub type ChildStdin = pipe::Sender;
/// The agent's end of a child's stdout or stderr.
pub type ChildOutput = pipe::Receiver;

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
    Pipes { stdin: Option<ChildStdin>, stdout: ChildOutput, stderr: ChildOutput },
    Pty(Arc<PtyMaster>),
}

/// A started child; its pid is also its process group id.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub io: ChildIo,
}

/// Validates and starts `req` (see [`super::launch`] for how).
pub fn spawn(registry: &Registry, req: &SpawnRequest) -> Result<Spawned> {
    let program =
        req.argv.first().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::InvalidArgument("no command given: set argv (program and arguments) or shell".into())
        })?;
    if let Some(s) = req.argv.iter().find(|s| s.contains('\0')) {
        return Err(Error::InvalidArgument(format!("argument {s:?} contains a NUL byte")));
    }
    for (k, v) in &req.env {
        berth_agent_input::env::check(k, v).map_err(Error::InvalidArgument)?;
    }
    match std::fs::metadata(&req.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::FailedPrecondition(format!("working directory `{}` is not a directory", req.cwd_shown)));
        }
        Err(e) => return Err(Error::io("use working directory", &req.cwd_shown, e)),
    }
    let mut env = Vec::with_capacity(req.env.len() + 1);
    if req.pty.is_some() && !req.env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".to_string(), "xterm-256color".to_string()));
    }
    env.extend(req.env.iter().cloned());
    let leader = if req.pty.is_some() { Leader::Session } else { Leader::Group };
    let launch = Launch::new(&req.argv, &req.cwd, &env, req.clean_env, leader)
        .map_err(|e| Error::io("prepare to start", program, e))?;
    let io_err = |what: &str, e: std::io::Error| Error::io(what, program, e);
    match req.pty {
        None => {
            let (stdin_r, stdin_w) = std::io::pipe().map_err(|e| io_err("make a stdin pipe for", e))?;
            let (stdout_r, stdout_w) = std::io::pipe().map_err(|e| io_err("make a stdout pipe for", e))?;
            let (stderr_r, stderr_w) = std::io::pipe().map_err(|e| io_err("make a stderr pipe for", e))?;
            let child_ends = [stdin_r.into(), stdout_w.into(), stderr_w.into()]
                .map(above_stdio)
                .into_iter()
                .collect::<std::io::Result<Vec<OwnedFd>>>()
                .map_err(|e| io_err("set up the pipes of", e))?;
            let fds = ChildFds {
                stdin: child_ends[0].as_raw_fd(),
                stdout: child_ends[1].as_raw_fd(),
                stderr: child_ends[2].as_raw_fd(),
            };
            let (child, pid) = start(registry, &launch, fds, program)?;
            // The child has its copies now; ours must close or the pipes never see EOF.
            drop(child_ends);
            let io = ChildIo::Pipes {
                stdin: Some(pipe::Sender::from_owned_fd(stdin_w.into()).map_err(|e| io_err("watch the stdin of", e))?),
                stdout: pipe::Receiver::from_owned_fd(stdout_r.into()).map_err(|e| io_err("watch the stdout of", e))?,
                stderr: pipe::Receiver::from_owned_fd(stderr_r.into()).map_err(|e| io_err("watch the stderr of", e))?,
            };
            Ok(Spawned { child, pid, io })
        }
        Some((rows, cols)) => {
            let pair = pty::open(rows, cols).map_err(|e| io_err("open a terminal for", e))?;
            let slave = above_stdio(pair.slave).map_err(|e| io_err("open a terminal for", e))?;
            let fd = slave.as_raw_fd();
            let master = PtyMaster::new(pair.master).map_err(|e| io_err("open a terminal for", e))?;
            let (child, pid) = start(registry, &launch, ChildFds { stdin: fd, stdout: fd, stderr: fd }, program)?;
            // The child holds the slave now; ours must close or the master never sees EOF.
            drop(slave);
            Ok(Spawned { child, pid, io: ChildIo::Pty(master) })
        }
    }
}

/// Starts the prepared child, tracked by the registry from before the reaper could see it.
fn start(registry: &Registry, launch: &Launch, fds: ChildFds, program: &str) -> Result<(Child, u32)> {
    let mut failed_step = Step::Setup;
    registry
        .spawn_tracked(|| {
            let pid = launch.spawn(fds).map_err(|(step, e)| {
                failed_step = step;
                e
            })?;
            Ok((Child::new(pid), pid))
        })
        .map_err(|e| spawn_error(program, failed_step, e))
        .and_then(|(child, pid)| match child {
            Ok(child) => Ok((child, pid)),
            Err(e) => {
                // Without a way to wait for it, the child cannot be reported on: stop it (the reaper
                // collects it once it is no longer tracked).
                let _ = super::registry::signal_group(pid, libc::SIGKILL);
                registry.child_reaped(pid);
                Err(Error::io("watch", program, e))
            }
        })
}

/// Moves a descriptor the child will get off 0-2 (the agent may run with those closed).
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 { Ok(fd) } else { Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?) }
}

fn spawn_error(program: &str, step: Step, e: std::io::Error) -> Error {
    if step == Step::Setup {
        return Error::io("set up the process for", program, e);
    }
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
