//! The registry of live sessions (exec processes and MCP servers) and of the child pids the agent spawned
//! itself. The reaper consults the latter so it never steals an exit status tokio is waiting for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// What kind of session a process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Exec,
    Mcp,
}

/// A live session, shared between its driver and the registry.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub kind: SessionKind,
    /// Also the process group id: every session leads its own group.
    pub pid: u32,
    pub argv: Vec<String>,
    pub tag: String,
    pub started_at_ms: i64,
    /// Set when KillSession or shutdown signalled it, so its exit is reported as KILLED.
    killed: AtomicBool,
}

impl Session {
    /// Whether someone other than the session's own client killed it.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Signals the session's whole process group.
    pub fn signal_group(&self, signal: i32) -> std::io::Result<()> {
        signal_group(self.pid, signal)
    }
}

/// Sends `signal` to process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> std::io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    if pgid <= 1 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: killpg takes plain integers; pgid > 1 so it can never signal the agent or every process.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(err) }
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Arc<Session>>,
    children: HashSet<i32>,
}

/// Sessions and tracked children.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain collections.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `spawn` with the child set locked and records the pid it returns, so the reaper can never see
    /// the new child before it is tracked.
    pub fn spawn_tracked<T>(&self, spawn: impl FnOnce() -> std::io::Result<(T, u32)>) -> std::io::Result<(T, u32)> {
        let mut inner = self.lock();
        let (t, pid) = spawn()?;
        inner.children.insert(pid as i32);
        Ok((t, pid))
    }

    /// Forgets a child once its exit status has been collected.
    pub fn child_reaped(&self, pid: u32) {
        self.lock().children.remove(&(pid as i32));
    }

    /// Runs `f` with the set of tracked pids held locked.
    pub fn with_children<R>(&self, f: impl FnOnce(&HashSet<i32>) -> R) -> R {
        f(&self.lock().children)
    }

    /// Adds a session and returns its shared handle.
    pub fn register(&self, kind: SessionKind, pid: u32, argv: Vec<String>, tag: String) -> Arc<Session> {
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let s = Arc::new(Session {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            pid,
            argv,
            tag,
            started_at_ms,
            killed: AtomicBool::new(false),
        });
        self.lock().sessions.insert(s.id.clone(), s.clone());
        s
    }

    pub fn unregister(&self, id: &str) {
        self.lock().sessions.remove(id);
    }

    /// All live sessions, oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.lock().sessions.values().cloned().collect();
        v.sort_by_key(|s| s.started_at_ms);
        v
    }

    /// Number of live sessions of `kind`.
    pub fn count(&self, kind: SessionKind) -> usize {
        self.lock().sessions.values().filter(|s| s.kind == kind).count()
    }

    /// Signals a session's process group (SIGKILL when `signal` is 0).
    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let signal = if signal == 0 { libc::SIGKILL } else { signal };
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidArgument(format!("{signal} is not a signal number (1-64)")));
        }
        let session = self
            .lock()
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no session `{id}` (it may have exited already)")))?;
        if matches!(signal, libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
            session.killed.store(true, Ordering::SeqCst);
        }
        session.signal_group(signal).map_err(|e| Error::io("signal session", id, e))
    }

    /// Signals every session (agent shutdown).
    pub fn signal_all(&self, signal: i32) {
        for s in self.list() {
            s.killed.store(true, Ordering::SeqCst);
            if let Err(e) = s.signal_group(signal) {
                tracing::warn!(session.id = %s.id, error = %e, "failed to signal session");
            }
        }
    }
}
