//! Detached processes: started once per client request id, running with no client attached, known by
//! an id and an optional tag until removed. Each stream's output goes to a [`Journal`] (stdout and
//! stderr, or a terminal's output as stdout); stdin takes writes at offsets, so a retried write is
//! applied once. A process's record (`info`, the protocol's `ProcessInfo` encoded) and its journals live
//! in `<state dir>/<id>/`, so after an agent restart (a restart of the bot's task) the list and the
//! journals are still there, and a process that was running is reported as ended by that restart.
//!
//! The records are the bot's files like any other, and the bot can rewrite them: a record that does
//! not decode is skipped (and logged), and nothing in one is trusted beyond what it describes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_proto::agent::v1 as pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::exit::{Exit, Reason};
use super::journal::Journal;
use super::launch::Child;
use super::pty::{PtyMaster, PtyReader};
use super::pump::{CHUNK_BYTES, StopGuard};
use super::registry::Registry;
use super::spawn::{ChildIo, ChildStdin, SpawnRequest, spawn};
use crate::error::{Error, Result};

/// Output kept per stream unless the start asks otherwise.
pub const DEFAULT_JOURNAL_BYTES: u64 = 64 << 20;
/// Journal segment size: old output is dropped in units of this.
const SEGMENT_BYTES: u64 = 1 << 20;
/// The most output kept per stream that a start may ask for.
pub const MAX_JOURNAL_BYTES: u64 = 1 << 30;
/// Output all of a bot's kept processes may hold together, unless the agent is told otherwise.
pub const DEFAULT_TOTAL_JOURNAL_BYTES: u64 = 1 << 30;
/// Processes kept (running or finished) before a start is refused until some are removed.
pub const MAX_PROCESSES: usize = 256;
/// After the process exits, how long output may still arrive (from what it left running) before the
/// journals are closed.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// One of a child's output streams, as the journal pumps read it.
type Output = Box<dyn AsyncRead + Send + Unpin>;

/// What a detached start asks for, already validated as an exec start would be.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub request_id: String,
    pub tag: String,
    pub spawn: SpawnRequest,
    pub timeout_ms: u64,
    pub stdin: Vec<u8>,
    pub close_stdin: bool,
    pub journal_bytes: u64,
}

/// Where a process's stdin goes, and how many bytes it has taken.
struct Stdin {
    sink: Option<Sink>,
    offset: u64,
}

enum Sink {
    Pipe(ChildStdin),
    Pty(Arc<PtyMaster>),
}

/// One detached process.
pub struct Process {
    dir: PathBuf,
    /// Its record, as listed and as kept on disk (spans and stdin offset filled in when read).
    info: Mutex<pb::ProcessInfo>,
    /// stdout, stderr.
    journals: [Journal; 2],
    stdin: tokio::sync::Mutex<Stdin>,
    stdin_offset: AtomicU64,
    pty: Option<Arc<PtyMaster>>,
    /// Set once the record says it ended.
    ended: watch::Sender<bool>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Process {
    /// Its record now.
    pub fn info(&self) -> pb::ProcessInfo {
        let mut info = lock(&self.info).clone();
        let span = |j: &Journal| {
            let s = j.span();
            Some(pb::OutputSpan { first: s.first, end: s.end })
        };
        info.stdout = span(&self.journals[0]);
        info.stderr = span(&self.journals[1]);
        info.stdin_offset = self.stdin_offset.load(Ordering::SeqCst);
        info
    }

    /// The journal of `stream` (0 stdout, 1 stderr).
    pub fn journal(&self, stream: usize) -> Option<&Journal> {
        self.journals.get(stream)
    }

    /// The output it may keep: its limit for each of its streams.
    fn reserved(&self) -> u64 {
        let info = lock(&self.info);
        info.journal_bytes.saturating_mul(if info.pty { 1 } else { 2 })
    }

    /// Whether it is still running.
    pub fn running(&self) -> bool {
        lock(&self.info).state == pb::ProcessState::Running as i32
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<pb::Exited> {
        lock(&self.info).exit.clone()
    }

    /// Writes `data` at stdin `offset`: the part already applied is skipped, a gap is refused. Returns
    /// the stdin bytes applied afterwards.
    pub async fn write_stdin(&self, offset: u64, data: &[u8], close: bool) -> Result<u64> {
        let mut st = self.stdin.lock().await;
        if offset > st.offset {
            return Err(Error::FailedPrecondition(format!(
                "stdin write at offset {offset}, but {} bytes were applied: resend from offset {}",
                st.offset, st.offset
            )));
        }
        let skip = usize::try_from(st.offset - offset).unwrap_or(usize::MAX).min(data.len());
        let fresh = &data[skip..];
        if !fresh.is_empty() {
            let written = match st.sink.as_mut() {
                None => return Err(Error::FailedPrecondition("the process's stdin is closed".into())),
                Some(Sink::Pipe(p)) => p.write_all(fresh).await,
                Some(Sink::Pty(m)) => m.write_all(fresh).await,
            };
            written.map_err(|e| Error::FailedPrecondition(format!("the process no longer reads its stdin: {e}")))?;
            st.offset += fresh.len() as u64;
            self.stdin_offset.store(st.offset, Ordering::SeqCst);
        }
        if close {
            match st.sink.take() {
                Some(Sink::Pty(m)) => {
                    // A terminal has no half-close: its EOF character (effective at the start of a line).
                    let _ = m.write_all(&[0x04]).await;
                }
                Some(Sink::Pipe(p)) => drop(p),
                None => {}
            }
        }
        Ok(st.offset)
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let m = self.pty.as_ref().ok_or_else(|| Error::FailedPrecondition("the process has no terminal".into()))?;
        m.resize(rows, cols).map_err(|e| Error::io("resize the terminal of", &self.dir.display().to_string(), e))
    }

    /// Waits until it has ended.
    pub async fn ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    fn save(&self) {
        let bytes = lock(&self.info).encode_to_vec();
        if let Err(e) = write_atomic(&self.dir.join("info"), &bytes) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not save a detached process's record");
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[derive(Default)]
struct Table {
    by_id: BTreeMap<String, Arc<Process>>,
    by_request: HashMap<String, String>,
}

/// Every detached process of this agent.
pub struct Detached {
    dir: PathBuf,
    table: Mutex<Table>,
    registry: Arc<Registry>,
    /// Why starts are refused, when the state directory could not be opened.
    unavailable: Option<String>,
    /// The most output all kept processes may hold together (each reserves its limit per stream).
    total_bytes: u64,
}

impl std::fmt::Debug for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Detached {
    /// Loads what a previous agent left in `dir` (created if missing): processes that were running
    /// then were ended by the restart that started this agent.
    pub fn load(dir: &Path, registry: Arc<Registry>, total_bytes: u64) -> std::io::Result<Detached> {
        std::fs::create_dir_all(dir)?;
        let mut table = Table::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match load_one(&path) {
                Ok(p) => {
                    let info = p.info();
                    table.by_request.insert(info.request_id.clone(), info.id.clone());
                    table.by_id.insert(info.id, Arc::new(p));
                }
                Err(e) => tracing::warn!(dir = %path.display(), error = %e, "skipped a detached process's record"),
            }
        }
        Ok(Detached { dir: dir.to_path_buf(), table: Mutex::new(table), registry, unavailable: None, total_bytes })
    }

    /// No detached processes: every start is refused with `why` (an agent that cannot write its state
    /// directory still serves everything else).
    pub fn unavailable(dir: &Path, registry: Arc<Registry>, why: String) -> Detached {
        Detached {
            dir: dir.to_path_buf(),
            table: Mutex::new(Table::default()),
            registry,
            unavailable: Some(why),
            total_bytes: 0,
        }
    }

    /// Every process kept, oldest first.
    pub fn list(&self) -> Vec<Arc<Process>> {
        let mut v: Vec<_> = lock(&self.table).by_id.values().cloned().collect();
        v.sort_by_key(|p| lock(&p.info).started_at_ms);
        v
    }

    /// One process.
    pub fn get(&self, id: &str) -> Result<Arc<Process>> {
        lock(&self.table).by_id.get(id).cloned().ok_or_else(|| {
            Error::NotFound(format!("no detached process `{id}` (list them with ListProcesses; removed ones are gone)"))
        })
    }

    /// Starts `req`, or returns the process its request id started before.
    pub fn start(&self, req: StartRequest) -> Result<Arc<Process>> {
        if let Some(why) = &self.unavailable {
            return Err(Error::FailedPrecondition(format!("detached processes are unavailable in this bot: {why}")));
        }
        // The table stays locked through the spawn: concurrent starts with one request id make one process.
        let mut table = lock(&self.table);
        if let Some(p) = table.by_request.get(&req.request_id).and_then(|id| table.by_id.get(id)) {
            return Ok(p.clone());
        }
        if table.by_id.len() >= MAX_PROCESSES {
            return Err(Error::ResourceExhausted(format!(
                "{MAX_PROCESSES} detached processes are kept: remove finished ones (RemoveProcess) first"
            )));
        }
        let reserved = table.by_id.values().fold(0u64, |sum, p| sum.saturating_add(p.reserved()));
        let wanted = req.journal_bytes * if req.spawn.pty.is_some() { 1 } else { 2 };
        if reserved.saturating_add(wanted) > self.total_bytes {
            return Err(Error::ResourceExhausted(format!(
                "detached processes may keep {} bytes of output in this bot; the {} kept reserve {reserved} and this \
                 one would reserve {wanted} ({} per stream): remove finished ones (RemoveProcess, `berth ps rm`) or \
                 ask for less (journal_bytes)",
                self.total_bytes,
                table.by_id.len(),
                req.journal_bytes
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = self.dir.join(&id);
        let io_err = |what: &str, e: std::io::Error| Error::io(what, &dir.display().to_string(), e);
        let journals = [
            Journal::create(&dir.join("stdout"), SEGMENT_BYTES, req.journal_bytes).map_err(|e| io_err("create", e))?,
            Journal::create(&dir.join("stderr"), SEGMENT_BYTES, req.journal_bytes).map_err(|e| io_err("create", e))?,
        ];
        let spawned = spawn(&self.registry, &req.spawn)?;
        let info = pb::ProcessInfo {
            id: id.clone(),
            tag: req.tag.clone(),
            request_id: req.request_id.clone(),
            argv: req.spawn.argv.clone(),
            state: pb::ProcessState::Running as i32,
            pid: spawned.pid,
            pty: req.spawn.pty.is_some(),
            started_at_ms: now_ms(),
            journal_bytes: req.journal_bytes,
            ..Default::default()
        };
        let (sink, readers, pty): (Option<Sink>, Vec<Output>, _) = match spawned.io {
            ChildIo::Pipes { stdin, stdout, stderr } => {
                (stdin.map(Sink::Pipe), vec![Box::new(stdout), Box::new(stderr)], None)
            }
            ChildIo::Pty(master) => {
                (Some(Sink::Pty(master.clone())), vec![Box::new(PtyReader(master.clone()))], Some(master))
            }
        };
        let p = Arc::new(Process {
            dir,
            info: Mutex::new(info),
            journals,
            stdin: tokio::sync::Mutex::new(Stdin { sink, offset: 0 }),
            stdin_offset: AtomicU64::new(0),
            pty,
            ended: watch::channel(false).0,
        });
        p.save();
        table.by_request.insert(req.request_id.clone(), id.clone());
        table.by_id.insert(id.clone(), p.clone());
        drop(table);
        tracing::info!(process.id = %id, pid = spawned.pid, request_id = %req.request_id, "detached process started");
        tokio::spawn(drive(p.clone(), self.registry.clone(), spawned.child, readers, req));
        Ok(p)
    }

    /// Forgets a finished process and removes its files.
    pub fn remove(&self, id: &str) -> Result<()> {
        let p = self.get(id)?;
        if p.running() {
            return Err(Error::FailedPrecondition(format!(
                "detached process `{id}` is still running: signal it (SignalProcess) and remove it once it ended"
            )));
        }
        let mut table = lock(&self.table);
        table.by_id.remove(id);
        table.by_request.retain(|_, v| v != id);
        drop(table);
        std::fs::remove_dir_all(&p.dir).map_err(|e| Error::io("remove", &p.dir.display().to_string(), e))
    }

    /// Signals a running process's group (SIGKILL when `signal` is 0).
    pub fn signal(&self, id: &str, signal: i32) -> Result<()> {
        let signal = if signal == 0 { libc::SIGKILL } else { signal };
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidArgument(format!("{signal} is not a signal number (1-64)")));
        }
        let p = self.get(id)?;
        let pid = lock(&p.info).pid;
        if !p.running() || pid == 0 {
            return Err(Error::FailedPrecondition(format!("detached process `{id}` has already ended")));
        }
        super::registry::signal_group(pid, signal).map_err(|e| Error::io("signal", id, e))
    }
}

fn load_one(dir: &Path) -> std::io::Result<Process> {
    let bytes = std::fs::read(dir.join("info"))?;
    let mut info = pb::ProcessInfo::decode(bytes.as_slice()).map_err(std::io::Error::other)?;
    let limit = info.journal_bytes.clamp(SEGMENT_BYTES, MAX_JOURNAL_BYTES);
    let journals = [
        Journal::reopen(&dir.join("stdout"), SEGMENT_BYTES, limit)?,
        Journal::reopen(&dir.join("stderr"), SEGMENT_BYTES, limit)?,
    ];
    if info.state == pb::ProcessState::Running as i32 {
        info.state = pb::ProcessState::Lost as i32;
        info.pid = 0;
        info.ended_at_ms = now_ms();
        info.exit = Some(pb::Exited {
            reason: pb::ExitReason::Killed as i32,
            message: "killed by a restart of the bot (its task and agent restarted while it ran)".into(),
            ..Default::default()
        });
        write_atomic(&dir.join("info"), &info.encode_to_vec())?;
    }
    let stdin_offset = info.stdin_offset;
    Ok(Process {
        dir: dir.to_path_buf(),
        info: Mutex::new(info),
        journals,
        stdin: tokio::sync::Mutex::new(Stdin { sink: None, offset: stdin_offset }),
        stdin_offset: AtomicU64::new(stdin_offset),
        pty: None,
        ended: watch::channel(true).0,
    })
}

/// Copies one output stream into its journal until EOF or, after the process ended, the stop.
async fn journal_pump(mut reader: Output, p: Arc<Process>, stream: usize, stop: watch::Receiver<bool>) {
    let mut guard = StopGuard::new(stop);
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    loop {
        buf.clear();
        let n = match guard.guarded(reader.read_buf(&mut buf)).await {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if !guard.admit(n) {
            return;
        }
        if let Some(j) = p.journal(stream)
            && let Err(e) = j.append(&buf[..n])
        {
            tracing::warn!(dir = %p.dir.display(), error = %e, "a detached process's output could not be kept");
            return;
        }
    }
}

/// Runs a process to its end: output into the journals, the timeout, the exit into the record.
async fn drive(p: Arc<Process>, registry: Arc<Registry>, mut child: Child, readers: Vec<Output>, req: StartRequest) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let pumps: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, r)| tokio::spawn(journal_pump(r, p.clone(), i, stop_rx.clone())))
        .collect();
    if (!req.stdin.is_empty() || req.close_stdin)
        && let Err(e) = p.write_stdin(0, &req.stdin, req.close_stdin).await
    {
        tracing::debug!(error = %e, "a detached process's first stdin was not taken");
    }
    let pid = lock(&p.info).pid;
    let deadline =
        (req.timeout_ms > 0).then(|| tokio::time::Instant::now() + std::time::Duration::from_millis(req.timeout_ms));
    let mut reason = Reason::Exited;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            () = super::pump::sleep_until(deadline), if reason == Reason::Exited => {
                reason = Reason::Timeout;
                let _ = super::registry::signal_group(pid, libc::SIGKILL);
            }
        }
    };
    registry.child_reaped(pid);
    super::pump::finish_pumps(pumps, &stop_tx, DRAIN_GRACE).await;
    for j in &p.journals {
        j.finish();
    }
    p.stdin.lock().await.sink = None;
    let exit = match status {
        Ok(st) => {
            let e = Exit::new(st, reason, req.timeout_ms);
            pb::Exited {
                exit_code: e.code,
                signal: e.signal,
                core_dumped: e.core_dumped,
                reason: if reason == Reason::Timeout { pb::ExitReason::Timeout } else { pb::ExitReason::Exited } as i32,
                message: e.message,
                ..Default::default()
            }
        }
        Err(e) => pb::Exited { message: format!("waiting for the process failed: {e}"), ..Default::default() },
    };
    tracing::info!(process.id = %lock(&p.info).id, exit = %exit.message, "detached process ended");
    {
        let mut info = lock(&p.info);
        info.state = pb::ProcessState::Exited as i32;
        info.pid = 0;
        info.ended_at_ms = now_ms();
        info.exit = Some(exit);
        info.stdin_offset = p.stdin_offset.load(Ordering::SeqCst);
    }
    p.save();
    p.ended.send_replace(true);
}
