//! The Exec stream: the first frame starts a process, later frames feed it; the response carries
//! `started`, output, and always ends with one `exited` frame. Timeout, client disconnect and KillSession
//! kill the whole process group; the stream can never hang on a pipe a grandchild keeps open.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use pb::exec_request::Frame as In;
use pb::exec_response::Frame as Out;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

use super::convert::exited_frame;
use crate::error::{Error, Result};
use crate::process::exit::{Exit, Reason};
use crate::process::launch::Child;
use crate::process::pty::{PtyMaster, PtyReader};
use crate::process::pump::{finish_pumps, pump, sleep_until};
use crate::process::registry::{Session, SessionKind};
use crate::process::spawn::{ChildIo, ChildStdin, SpawnRequest, spawn};
use crate::state::Agent;

/// How long a client may take to send the `start` frame.
pub const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(30);
/// After the process exits, how long output may still arrive (from grandchildren) before the pumps stop.
const DRAIN_GRACE: Duration = Duration::from_millis(100);

pub type ExecStream = mpsc::Receiver<Result<pb::ExecResponse, Status>>;

/// Waits for the start frame, spawns, and returns the response stream; spawn failures are returned here,
/// before any frame, as a typed error.
pub async fn open(agent: Arc<Agent>, mut inbound: Streaming<pb::ExecRequest>) -> Result<ExecStream> {
    let start = match tokio::time::timeout(FIRST_FRAME_DEADLINE, inbound.message()).await {
        Err(_) => {
            return Err(Error::DeadlineExceeded("no `start` frame within 30 s".into()));
        }
        Ok(Err(status)) => {
            return Err(Error::Aborted(format!("exec stream failed before start: {}", status.message())));
        }
        Ok(Ok(None)) => {
            return Err(Error::InvalidArgument("exec stream closed before the `start` frame".into()));
        }
        Ok(Ok(Some(pb::ExecRequest { frame: Some(In::Start(s)) }))) => s,
        Ok(Ok(Some(_))) => {
            return Err(Error::InvalidArgument("the first exec frame must be `start`".into()));
        }
    };
    let req = spawn_request(&agent, &start)?;
    let argv = req.argv.clone();
    let spawned = spawn(&agent.registry, &req)?;
    let session = agent.registry.register(SessionKind::Exec, spawned.pid, argv, start.tag.clone());
    tracing::debug!(session.id = %session.id, pid = spawned.pid, "exec started");
    let (tx, rx) = mpsc::channel(32);
    let started = Out::Started(pb::Started { pid: spawned.pid, session_id: session.id.clone() });
    // The channel is fresh, so this cannot block; a closed receiver is handled by the driver.
    let _ = tx.try_send(Ok(pb::ExecResponse { frame: Some(started) }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sink, pumps) = match spawned.io {
        ChildIo::Pipes { stdin, stdout, stderr } => (
            StdinSink::Pipe(stdin),
            vec![
                tokio::spawn(pump(stdout, tx.clone(), stop_rx.clone(), |b| out(Out::Stdout(b)))),
                tokio::spawn(pump(stderr, tx.clone(), stop_rx.clone(), |b| out(Out::Stderr(b)))),
            ],
        ),
        ChildIo::Pty(master) => (
            StdinSink::Pty(master.clone()),
            vec![tokio::spawn(pump(PtyReader(master), tx.clone(), stop_rx, |b| out(Out::Stdout(b))))],
        ),
    };
    let input = tokio::spawn(input_loop(inbound, sink, spawned.pid, start.stdin, start.close_stdin));
    let driver = Driver { agent, session, tx, stop: stop_tx, timeout_ms: start.timeout_ms };
    tokio::spawn(driver.run(spawned.child, pumps, input));
    Ok(rx)
}

/// What an exec start asks to run, checked: argv or shell (not both), the terminal's size, the working
/// directory inside the root, the environment.
pub(super) fn spawn_request(agent: &Agent, start: &pb::ExecStart) -> Result<SpawnRequest> {
    let argv = match (start.argv.is_empty(), start.shell.is_empty()) {
        (false, true) => start.argv.clone(),
        (true, false) => vec!["/bin/sh".into(), "-c".into(), start.shell.clone()],
        (false, false) => {
            return Err(Error::InvalidArgument("set either argv or shell, not both".into()));
        }
        (true, true) => {
            return Err(Error::InvalidArgument("no command given: set argv or shell".into()));
        }
    };
    let pty = match &start.pty {
        None => None,
        Some(p) => Some(pty_size(p)?),
    };
    let (cwd, cwd_shown) = super::resolve_cwd(agent, &start.cwd)?;
    Ok(SpawnRequest {
        argv,
        cwd,
        cwd_shown,
        env: start.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        clean_env: start.clean_env,
        pty,
    })
}

fn out(frame: Out) -> pb::ExecResponse {
    pb::ExecResponse { frame: Some(frame) }
}

pub(super) fn pty_size(p: &pb::PtySize) -> Result<(u16, u16)> {
    let rows = u16::try_from(p.rows).ok().filter(|r| *r > 0);
    let cols = u16::try_from(p.cols).ok().filter(|c| *c > 0);
    match (rows, cols) {
        (Some(r), Some(c)) => Ok((r, c)),
        _ => Err(Error::InvalidArgument(format!("pty size {}x{} must be 1-65535 rows and columns", p.rows, p.cols))),
    }
}

/// How the input side ended.
enum InputEnd {
    /// The client half-closed; stdin was closed. Output still flows.
    HalfClosed,
    /// The request stream failed: the client cancelled or disconnected.
    ClientGone,
    /// The client sent something invalid.
    Protocol(String),
}

/// Where stdin frames go.
enum StdinSink {
    Pipe(Option<ChildStdin>),
    Pty(Arc<PtyMaster>),
}

impl StdinSink {
    async fn write(&mut self, data: &[u8]) {
        let r = match self {
            StdinSink::Pipe(None) => return,
            StdinSink::Pipe(Some(p)) => p.write_all(data).await,
            StdinSink::Pty(m) => m.write_all(data).await,
        };
        if let Err(e) = r {
            // The process closed its stdin (EPIPE) or exited; later input has nowhere to go.
            tracing::debug!(error = %e, "stdin write failed; dropping further input");
            if let StdinSink::Pipe(p) = self {
                p.take();
            }
        }
    }

    async fn close(&mut self) {
        match self {
            StdinSink::Pipe(p) => drop(p.take()),
            // A terminal has no half-close: send its EOF character (effective at the start of a line).
            StdinSink::Pty(m) => {
                let _ = m.write_all(&[0x04]).await;
            }
        }
    }
}

async fn input_loop(
    mut inbound: Streaming<pb::ExecRequest>,
    mut sink: StdinSink,
    pgid: u32,
    first_stdin: Vec<u8>,
    close_first: bool,
) -> InputEnd {
    if !first_stdin.is_empty() {
        sink.write(&first_stdin).await;
    }
    if close_first {
        sink.close().await;
    }
    loop {
        let frame = match inbound.message().await {
            Ok(Some(pb::ExecRequest { frame: Some(f) })) => f,
            Ok(Some(pb::ExecRequest { frame: None })) => {
                return InputEnd::Protocol("empty exec frame".into());
            }
            Ok(None) => {
                sink.close().await;
                return InputEnd::HalfClosed;
            }
            Err(_) => return InputEnd::ClientGone,
        };
        match frame {
            In::Stdin(data) => sink.write(&data).await,
            In::CloseStdin(_) => sink.close().await,
            In::Resize(size) => match (&sink, pty_size(&size)) {
                (StdinSink::Pty(m), Ok((r, c))) => {
                    if let Err(e) = m.resize(r, c) {
                        tracing::warn!(error = %e, "terminal resize failed");
                    }
                }
                (StdinSink::Pty(_), Err(e)) => return InputEnd::Protocol(e.to_string()),
                (StdinSink::Pipe(_), _) => {}
            },
            In::Signal(s) => {
                if !(1..=64).contains(&s.signal) {
                    return InputEnd::Protocol(format!("{} is not a signal number (1-64)", s.signal));
                }
                if let Err(e) = crate::process::registry::signal_group(pgid, s.signal) {
                    tracing::warn!(error = %e, "failed to signal process group");
                }
            }
            In::Start(_) => {
                return InputEnd::Protocol("`start` may only be the first frame".into());
            }
        }
    }
}

struct Driver {
    agent: Arc<Agent>,
    session: Arc<Session>,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
    stop: watch::Sender<bool>,
    timeout_ms: u64,
}

impl Driver {
    async fn run(self, mut child: Child, pumps: Vec<JoinHandle<()>>, mut input: JoinHandle<InputEnd>) {
        let deadline =
            (self.timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(self.timeout_ms));
        let mut reason: Option<Reason> = None;
        let mut protocol_error = None;
        let mut input_done = false;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                () = sleep_until(deadline), if reason.is_none() => {
                    reason = Some(Reason::Timeout);
                    self.kill_group();
                }
                () = self.tx.closed(), if reason.is_none() => {
                    reason = Some(Reason::ClientGone);
                    self.kill_group();
                }
                end = &mut input, if !input_done => {
                    input_done = true;
                    match end {
                        Ok(InputEnd::HalfClosed) => {}
                        Ok(InputEnd::ClientGone) | Err(_) => {
                            reason.get_or_insert(Reason::ClientGone);
                            self.kill_group();
                        }
                        Ok(InputEnd::Protocol(msg)) => {
                            reason.get_or_insert(Reason::ProtocolError);
                            protocol_error = Some(msg);
                            self.kill_group();
                        }
                    }
                }
            }
        };
        self.agent.registry.child_reaped(self.session.pid);
        finish_pumps(pumps, &self.stop, DRAIN_GRACE).await;
        input.abort();
        self.agent.registry.unregister(&self.session.id);
        let reason = if self.session.was_killed() { Reason::Killed } else { reason.unwrap_or(Reason::Exited) };
        let last = match (status, protocol_error) {
            (_, Some(msg)) => Err(Status::invalid_argument(msg)),
            (Ok(st), None) => {
                let exit = Exit::new(st, reason, self.timeout_ms);
                tracing::debug!(session.id = %self.session.id, exit = %exit.message, "exec finished");
                Ok(out(Out::Exited(exited_frame(exit, Vec::new()))))
            }
            (Err(e), None) => Err(Status::internal(format!("waiting for the process failed: {e}"))),
        };
        let _ = self.tx.send(last).await;
    }

    fn kill_group(&self) {
        if let Err(e) = self.session.signal_group(libc::SIGKILL) {
            tracing::warn!(session.id = %self.session.id, error = %e, "failed to kill process group");
        }
    }
}
