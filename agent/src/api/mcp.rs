//! The McpSession stream: one MCP stdio server per stream, relayed message by message. Client frames are
//! written to the server's stdin with a newline; each stdout line becomes one `message` frame, untouched.
//! stderr is always drained (an undrained pipe deadlocks servers) into a bounded tail, and optionally
//! forwarded without ever applying backpressure. Shutdown follows MCP: close stdin, wait, SIGTERM the
//! group, wait, SIGKILL. There is no timeout for a live server.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

use super::convert::exited_frame;
use super::exec::FIRST_FRAME_DEADLINE;
use crate::error::{Error, Result};
use crate::mcp::lines::{LineError, LineReader};
use crate::process::exit::{Exit, Reason};
use crate::process::launch::Child;
use crate::process::pump::sleep_until;
use crate::process::pump::{CHUNK_BYTES, StopGuard};
use crate::process::registry::{Session, SessionKind};
use crate::process::spawn::{ChildIo, ChildOutput, ChildStdin, SpawnRequest, spawn};
use crate::state::Agent;

/// stderr bytes kept for the exit report.
pub const STDERR_TAIL_BYTES: usize = 16 << 10;
/// Default wait at each step of the shutdown escalation.
const DEFAULT_GRACE: Duration = Duration::from_millis(2000);
/// How long output may still arrive after the server exited.
const DRAIN_GRACE: Duration = Duration::from_millis(100);

type Tx = mpsc::Sender<Result<pb::McpSessionResponse, Status>>;
pub type McpStream = mpsc::Receiver<Result<pb::McpSessionResponse, Status>>;

fn out(frame: Out) -> pb::McpSessionResponse {
    pb::McpSessionResponse { frame: Some(frame) }
}

/// Waits for the `open` frame, starts the server and returns the response stream.
pub async fn open(agent: Arc<Agent>, mut inbound: Streaming<pb::McpSessionRequest>) -> Result<McpStream> {
    let open = match tokio::time::timeout(FIRST_FRAME_DEADLINE, inbound.message()).await {
        Err(_) => {
            return Err(Error::DeadlineExceeded("no `open` frame within 30 s".into()));
        }
        Ok(Err(status)) => {
            return Err(Error::Aborted(format!("MCP stream failed before open: {}", status.message())));
        }
        Ok(Ok(None)) => {
            return Err(Error::InvalidArgument("MCP stream closed before the `open` frame".into()));
        }
        Ok(Ok(Some(pb::McpSessionRequest { frame: Some(In::Open(o)) }))) => o,
        Ok(Ok(Some(_))) => {
            return Err(Error::InvalidArgument("the first MCP frame must be `open`".into()));
        }
    };
    let mut argv = vec![open.command.clone()];
    argv.extend(open.args.iter().cloned());
    let (cwd, cwd_shown) = super::resolve_cwd(&agent, &open.cwd)?;
    let req = SpawnRequest {
        argv: argv.clone(),
        cwd,
        cwd_shown,
        env: open.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        clean_env: open.clean_env,
        pty: None,
    };
    let spawned = spawn(&agent.registry, &req)?;
    let ChildIo::Pipes { stdin, stdout, stderr } = spawned.io else {
        return Err(Error::internal("MCP server was started without pipes"));
    };
    let session = agent.registry.register(SessionKind::Mcp, spawned.pid, argv, open.tag.clone());
    tracing::debug!(session.id = %session.id, pid = spawned.pid, "MCP session started");
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.try_send(Ok(out(Out::Started(pb::Started { pid: spawned.pid, session_id: session.id.clone() }))));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stdout_task = tokio::spawn(relay_stdout(stdout, tx.clone(), stop_rx.clone(), agent.max_mcp_message_bytes));
    let stderr_task = tokio::spawn(drain_stderr(stderr, tx.clone(), stop_rx, open.forward_stderr));
    let input = tokio::spawn(input_loop(inbound, stdin));
    let grace =
        if open.shutdown_grace_ms == 0 { DEFAULT_GRACE } else { Duration::from_millis(open.shutdown_grace_ms.into()) };
    let driver = Driver { agent, session, tx, stop: stop_tx, grace };
    tokio::spawn(driver.run(spawned.child, stdout_task, stderr_task, input));
    Ok(rx)
}

enum InputEnd {
    /// The client half-closed (or sent close_stdin): the server's stdin is closed.
    StdinClosed,
    ClientGone,
    Protocol(String),
}

async fn input_loop(mut inbound: Streaming<pb::McpSessionRequest>, mut stdin: Option<ChildStdin>) -> InputEnd {
    loop {
        let frame = match inbound.message().await {
            Ok(Some(pb::McpSessionRequest { frame: Some(f) })) => f,
            Ok(Some(pb::McpSessionRequest { frame: None })) => {
                return InputEnd::Protocol("empty MCP frame".into());
            }
            Ok(None) => return InputEnd::StdinClosed,
            Err(_) => return InputEnd::ClientGone,
        };
        match frame {
            In::Message(mut msg) => {
                if msg.last() == Some(&b'\n') {
                    msg.pop();
                }
                if msg.contains(&b'\n') {
                    return InputEnd::Protocol("an MCP message must not contain a raw newline".into());
                }
                msg.push(b'\n');
                if let Some(pipe) = stdin.as_mut()
                    && let Err(e) = pipe.write_all(&msg).await
                {
                    tracing::debug!(error = %e, "MCP server closed its stdin; dropping further messages");
                    stdin = None;
                }
            }
            In::CloseStdin(_) => return InputEnd::StdinClosed,
            In::Open(_) => return InputEnd::Protocol("`open` may only be the first frame".into()),
        }
    }
}

/// Relays stdout line by line. Returns an error if a line exceeded the limit.
async fn relay_stdout(stdout: ChildOutput, tx: Tx, stop: watch::Receiver<bool>, max: usize) -> Result<(), LineError> {
    let mut lines = LineReader::new(stdout, max);
    let mut guard = StopGuard::new(stop);
    loop {
        let line = match guard.guarded(lines.next_line()).await {
            Some(Ok(Some(line))) => line,
            Some(Err(e @ LineError::TooLong { .. })) => return Err(e),
            _ => return Ok(()),
        };
        if !guard.admit(line.len()) {
            return Ok(());
        }
        if tx.send(Ok(out(Out::Message(line)))).await.is_err() {
            return Ok(());
        }
    }
}

/// Drains stderr into a bounded tail, forwarding chunks when asked and there is room.
async fn drain_stderr(mut stderr: ChildOutput, tx: Tx, stop: watch::Receiver<bool>, forward: bool) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut guard = StopGuard::new(stop);
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match guard.guarded(stderr.read(&mut buf)).await {
            Some(Ok(n)) if n > 0 => n,
            _ => break,
        };
        if !guard.admit(n) {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
        if forward {
            // Never block on the client: stderr is kept in the tail whether or not it is forwarded.
            let _ = tx.try_send(Ok(out(Out::Stderr(buf[..n].to_vec()))));
        }
    }
    if tail.len() > STDERR_TAIL_BYTES {
        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
    }
    tail
}

struct Driver {
    agent: Arc<Agent>,
    session: Arc<Session>,
    tx: Tx,
    stop: watch::Sender<bool>,
    grace: Duration,
}

impl Driver {
    async fn run(
        self,
        mut child: Child,
        mut stdout_task: JoinHandle<Result<(), LineError>>,
        stderr_task: JoinHandle<Vec<u8>>,
        mut input: JoinHandle<InputEnd>,
    ) {
        let mut reason: Option<Reason> = None;
        let mut protocol_error: Option<String> = None;
        let (mut input_done, mut stdout_done) = (false, false);
        // Set once stdin is closed: when to SIGTERM, then when to SIGKILL.
        let mut term_at: Option<tokio::time::Instant> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                () = self.tx.closed(), if reason.is_none() => {
                    reason = Some(Reason::ClientGone);
                    // Dropping the input task drops the server's stdin: the graceful shutdown signal.
                    input.abort();
                    self.begin_shutdown(&mut term_at, &mut kill_at);
                }
                end = &mut input, if !input_done => {
                    input_done = true;
                    match end {
                        Ok(InputEnd::StdinClosed) => self.begin_shutdown(&mut term_at, &mut kill_at),
                        Ok(InputEnd::ClientGone) | Err(_) => {
                            reason.get_or_insert(Reason::ClientGone);
                            self.begin_shutdown(&mut term_at, &mut kill_at);
                        }
                        Ok(InputEnd::Protocol(msg)) => {
                            reason.get_or_insert(Reason::ProtocolError);
                            protocol_error = Some(msg);
                            self.signal(libc::SIGKILL);
                        }
                    }
                }
                r = &mut stdout_task, if !stdout_done => {
                    stdout_done = true;
                    if let Ok(Err(e)) = r {
                        reason.get_or_insert(Reason::ProtocolError);
                        protocol_error = Some(format!("the MCP server wrote a {e}"));
                        self.signal(libc::SIGKILL);
                    }
                }
                () = sleep_until(term_at) => {
                    term_at = None;
                    self.signal(libc::SIGTERM);
                }
                () = sleep_until(kill_at) => {
                    kill_at = None;
                    self.signal(libc::SIGKILL);
                }
            }
        };
        self.agent.registry.child_reaped(self.session.pid);
        // The server is gone; make sure nothing it started outlives the session.
        self.signal(libc::SIGKILL);
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        if !stdout_done && tokio::time::timeout_at(deadline, &mut stdout_task).await.is_err() {
            let _ = self.stop.send(true);
            let _ = stdout_task.await;
        }
        let _ = self.stop.send(true);
        let tail = stderr_task.await.unwrap_or_default();
        input.abort();
        self.agent.registry.unregister(&self.session.id);
        let reason = if self.session.was_killed() { Reason::Killed } else { reason.unwrap_or(Reason::Exited) };
        let last = self.last_frame(status, reason, protocol_error, tail);
        let _ = self.tx.send(last).await;
    }

    /// The session's last frame: how the server ended, with any protocol error and its stderr's tail.
    fn last_frame(
        &self,
        status: std::io::Result<std::process::ExitStatus>,
        reason: Reason,
        protocol_error: Option<String>,
        tail: Vec<u8>,
    ) -> std::result::Result<pb::McpSessionResponse, Status> {
        let st = status.map_err(|e| Status::internal(format!("waiting for the MCP server failed: {e}")))?;
        let mut exit = Exit::new(st, reason, 0);
        if let Some(msg) = protocol_error {
            exit.message = format!("{}: {msg}", exit.message);
        }
        tracing::debug!(session.id = %self.session.id, exit = %exit.message, "MCP session finished");
        Ok(out(Out::Exited(exited_frame(exit, tail))))
    }

    fn begin_shutdown(&self, term_at: &mut Option<tokio::time::Instant>, kill_at: &mut Option<tokio::time::Instant>) {
        if term_at.is_none() && kill_at.is_none() {
            let now = tokio::time::Instant::now();
            *term_at = Some(now + self.grace);
            *kill_at = Some(now + 2 * self.grace);
        }
    }

    fn signal(&self, sig: i32) {
        if let Err(e) = self.session.signal_group(sig) {
            tracing::warn!(session.id = %self.session.id, error = %e, "failed to signal MCP server");
        }
    }
}
