//! Starting a program with `clone(CLONE_VM | CLONE_VFORK)`, the way `posix_spawn` does, plus the steps
//! `posix_spawn` cannot take (joining the user cgroup, raising the OOM score). The child borrows the
//! agent's memory until it calls `execve`, so nothing is copied: a plain `fork` copies the agent's page
//! tables and then makes it take a copy-on-write fault on every page it touches next, about 0.2 ms per exec
//! on the benchmark machine (docs/BENCHMARKS.md). The agent's thread is suspended until the child has
//! exec'd or failed, which is also what `std::process::Command::spawn` waits for.
//!
//! Between clone and exec the child runs only async-signal-safe system calls on data prepared here
//! beforehand: no allocation, no locks, no Rust runtime. Also here: [`Child`], waiting for the exit
//! through a pidfd (SIGCHLD where the kernel has none), without ever reaping a pid it does not own.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// Where the search goes when neither the new environment nor the agent's own has a PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The child's stack until it execs: it only makes system calls.
const CHILD_STACK_BYTES: usize = 64 << 10;

/// How the child relates to the agent's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    /// Its own process group (pipes).
    Group,
    /// Its own session with `stdin` as the controlling terminal (a pty).
    Session,
}

/// Everything the child needs, built before the clone (the child may not allocate).
pub struct Launch {
    /// Paths to `execve`, in PATH order (one when the program names a path).
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    leader: Leader,
}

/// The child's standard streams: descriptors the agent keeps open until [`Launch::spawn`] returns.
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// What the child reports when it cannot exec: the step and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Exec,
    Setup,
}

impl Launch {
    /// Prepares `argv` to run in `cwd` with the environment built from the agent's own (or none, with
    /// `clean_env`) and `env` on top, later entries winning. Fails only on NUL bytes, which the caller
    /// has already refused.
    pub fn new(
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        clean_env: bool,
        leader: Leader,
    ) -> io::Result<Launch> {
        let program = argv.first().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut vars: Vec<(OsString, OsString)> = if clean_env { Vec::new() } else { std::env::vars_os().collect() };
        for (k, v) in env {
            match vars.iter_mut().find(|(name, _)| name == OsStr::new(k)) {
                Some(slot) => slot.1 = v.into(),
                None => vars.push((k.into(), v.into())),
            }
        }
        let path = vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let envp = vars
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                cstring(kv)
            })
            .collect::<io::Result<_>>()?;
        Ok(Launch {
            candidates: candidates(program, &path)?,
            argv: argv.iter().map(|a| cstring(a.as_bytes().to_vec())).collect::<io::Result<_>>()?,
            envp,
            cwd: cstring(cwd.as_os_str().as_bytes().to_vec())?,
            leader,
        })
    }

    /// Starts the child and returns its pid once it has exec'd. A failure before or at exec comes back
    /// as the child's errno (the child is reaped here) and which step failed.
    pub fn spawn(&self, stdio: ChildFds) -> Result<u32, (Step, io::Error)> {
        // The child's descriptors must not sit on 0-2, or the dup2 onto one stream could close another.
        let low = [stdio.stdin, stdio.stdout, stdio.stderr].iter().any(|fd| (0..=2).contains(fd));
        if low {
            return Err((Step::Setup, io::Error::from_raw_os_error(libc::EBADF)));
        }
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let candidates: Vec<*const libc::c_char> = self.candidates.iter().map(|c| c.as_ptr()).collect();
        let procs = super::cgroup::raw_fds();
        let mut ctx = ChildContext {
            candidates: &candidates,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: self.cwd.as_ptr(),
            stdio,
            leader: self.leader,
            cgroup_procs: &procs,
            failed_step: Step::Setup,
            errno: 0,
        };
        let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK_BYTES);
        // The stack grows down from its 16-byte aligned end.
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK_BYTES) & !15;
        // SAFETY: every signal is blocked around the clone so no handler of the agent's runs on the child
        // (which shares our memory) before it has reset them; the masks are plain values.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            // SAFETY: `child_main` only makes async-signal-safe calls on `ctx`, which outlives the child's
            // use of it: CLONE_VFORK suspends this thread until the child has exec'd or exited. The stack is
            // ours and unused by anything else until then.
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut ctx).cast(),
            );
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err((Step::Setup, err));
            }
            pid
        };
        drop(stack);
        if ctx.errno != 0 {
            reap_failed(pid);
            return Err((ctx.failed_step, io::Error::from_raw_os_error(ctx.errno)));
        }
        u32::try_from(pid).map_err(|_| (Step::Setup, io::Error::from_raw_os_error(libc::ESRCH)))
    }
}

/// `execvp`'s search, done before the clone: the program itself when it names a path, else each PATH
/// directory joined with it (an empty entry is the working directory, as POSIX says).
fn candidates(program: &str, path: &OsStr) -> io::Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![cstring(program.as_bytes().to_vec())?]);
    }
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            let mut p = if dir.is_empty() { b".".to_vec() } else { dir.to_vec() };
            p.push(b'/');
            p.extend_from_slice(program.as_bytes());
            cstring(p)
        })
        .collect()
}

fn cstring(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Collects a child that failed before exec (it has called `_exit` already).
fn reap_failed(pid: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child's pid with a local status word.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Signals are numbered below this on Linux.
const NSIG: libc::c_int = 65;

/// Records why the child could not exec and ends it.
///
/// # Safety
/// Only in the child, between clone and exec.
unsafe fn fail(ctx: &mut ChildContext, step: Step, errno: i32) -> ! {
    ctx.failed_step = step;
    ctx.errno = if errno == 0 { libc::EIO } else { errno };
    // SAFETY: _exit runs no handlers and touches no shared state.
    unsafe { libc::_exit(127) }
}

/// What [`child_main`] reads, and where it writes why it failed.
struct ChildContext<'a> {
    candidates: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: ChildFds,
    leader: Leader,
    cgroup_procs: &'a [RawFd],
    failed_step: Step,
    errno: i32,
}

/// The child between clone and exec. Only async-signal-safe system calls; every failure is reported in
/// the context (our memory is the agent's) and ends in `_exit(127)`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildContext` the suspended parent passed to clone.
    let ctx = unsafe { &mut *arg.cast::<ChildContext>() };
    // SAFETY: plain system calls on descriptors and constants prepared by the parent.
    unsafe {
        let errno = || *libc::__errno_location();
        // The agent's handlers must not run here or survive into the program; SIGPIPE is ignored by
        // the agent and must be the default again for the program (as std does).
        for sig in 1..NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN) || sig == libc::SIGPIPE {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let s = ctx.stdio;
        for (fd, target) in [(s.stdin, 0), (s.stdout, 1), (s.stderr, 2)] {
            if libc::dup2(fd, target) < 0 {
                fail(ctx, Step::Setup, errno());
            }
        }
        if libc::chdir(ctx.cwd) != 0 {
            fail(ctx, Step::Setup, errno());
        }
        match ctx.leader {
            Leader::Group => {
                if libc::setpgid(0, 0) != 0 {
                    fail(ctx, Step::Setup, errno());
                }
            }
            Leader::Session => {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    fail(ctx, Step::Setup, errno());
                }
            }
        }
        demote_oom_score();
        for fd in ctx.cgroup_procs {
            // "0" is the writing process itself.
            if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                fail(ctx, Step::Setup, errno());
            }
        }
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // execvp's rules: keep looking past a directory without the program or one we may not search,
        // report EACCES if that was all we ever found, stop at any other error.
        let mut seen_eacces = false;
        let mut last = libc::ENOENT;
        for path in ctx.candidates {
            libc::execve(*path, ctx.argv, ctx.envp);
            last = errno();
            match last {
                libc::EACCES => seen_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => fail(ctx, Step::Exec, last),
            }
        }
        fail(ctx, Step::Exec, if seen_eacces { libc::EACCES } else { last })
    }
}

/// A started child, waited for through a pidfd. Its pid stays unreaped (and so unreused) until
/// [`Child::wait`] returns its status.
pub struct Child {
    pid: libc::pid_t,
    waiter: Waiter,
    status: Option<ExitStatus>,
}

enum Waiter {
    Pidfd(AsyncFd<OwnedFd>),
    /// Kernels before 5.3 have no pidfd: look again on every SIGCHLD.
    Sigchld(tokio::signal::unix::Signal),
}

impl Child {
    /// Watches `pid`, a child of ours that nothing else reaps.
    pub fn new(pid: u32) -> io::Result<Child> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        let waiter = if fd >= 0 {
            // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            // SAFETY: the OwnedFd moves into the AsyncFd, so it stays open and the same for its whole life.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
            Waiter::Pidfd(fd.map_err(io::Error::from)?)
        } else {
            Waiter::Sigchld(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?)
        };
        Ok(Child { pid, waiter, status: None })
    }

    /// Waits for the child to exit and reaps it. Cancel-safe; later calls return the same status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = reap(self.pid, &mut self.status)? {
                return Ok(st);
            }
            match &mut self.waiter {
                Waiter::Pidfd(fd) => {
                    let mut ready = fd.readable().await?;
                    if reap(self.pid, &mut self.status)?.is_none() {
                        ready.clear_ready();
                    }
                }
                Waiter::Sigchld(sig) => {
                    // A SIGCHLD may have come before this stream existed: look again now and then anyway.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), sig.recv()).await;
                }
            }
        }
    }
}

/// Reaps `pid` if it has exited, remembering its status in `status`.
fn reap(pid: libc::pid_t, status: &mut Option<ExitStatus>) -> io::Result<Option<ExitStatus>> {
    if status.is_some() {
        return Ok(*status);
    }
    let mut raw = 0;
    // SAFETY: waitpid on our own child's pid, without blocking.
    let rc = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        rc if rc == pid => {
            *status = Some(ExitStatus::from_raw(raw));
            Ok(*status)
        }
        _ => Err(io::Error::last_os_error()),
    }
}

/// What the agent's children add to their OOM score: when a bot runs out of memory, the kernel kills one
/// of them, never the agent serving every session.
const CHILD_OOM_SCORE_ADJ: &[u8] = b"500";

/// Between clone and exec: marks the child as the OOM killer's first choice (see [`CHILD_OOM_SCORE_ADJ`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &[CString]) -> Vec<String> {
        c.iter().map(|c| c.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_program_with_a_slash_is_not_searched() {
        assert_eq!(names(&candidates("./x", OsStr::new("/a:/b")).unwrap()), ["./x"]);
        assert_eq!(names(&candidates("/bin/sh", OsStr::new("/a")).unwrap()), ["/bin/sh"]);
    }

    #[test]
    fn path_is_searched_in_order_and_an_empty_entry_is_the_working_directory() {
        assert_eq!(names(&candidates("ls", OsStr::new("/a::/b")).unwrap()), ["/a/ls", "./ls", "/b/ls"]);
    }

    #[test]
    fn later_environment_entries_win_and_clean_env_starts_empty() {
        let env = vec![("A".to_string(), "1".to_string()), ("A".to_string(), "2".to_string())];
        let l = Launch::new(&["true".into()], Path::new("/"), &env, true, Leader::Group).unwrap();
        assert_eq!(names(&l.envp), ["A=2"]);
    }

    #[test]
    fn descriptors_on_the_standard_streams_are_refused() {
        let l = Launch::new(&["/bin/true".into()], Path::new("/"), &[], true, Leader::Group).unwrap();
        let err = l.spawn(ChildFds { stdin: 0, stdout: 10, stderr: 11 }).unwrap_err();
        assert_eq!(err.0, Step::Setup);
    }
}
