//! One MCP session through berthd: the server started in the bot by its agent, messages relayed both
//! ways untouched, and berthd's own rules on top:
//! - **idle reaping**: no message either way for the idle timeout → the server's stdin is closed (MCP's
//!   shutdown; the agent escalates to SIGTERM/SIGKILL) and the client gets `exited` with
//!   `EXIT_REASON_IDLE`, whatever the client's connection still looks like;
//! - **restart with backoff only when nothing is lost**: a server that exits before the client sent it
//!   anything is started again (up to [`START_ATTEMPTS`]); after that, an exit ends the session with its
//!   status and stderr tail, never silently;
//! - **the client going away** (its receiver dropped) drops the agent stream, which the agent treats as
//!   a disconnect (stdin closed, then the signal escalation).

use std::time::Duration;

use berth_proto::agent::v1 as pb;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::McpHub;
use crate::bots::Platform;
use crate::error::{Error, Result};

/// Starts of a server tried before its exit is reported (only while the client has sent nothing).
pub const START_ATTEMPTS: u32 = 3;
/// Wait before the first restart; doubled each time.
const RESTART_BACKOFF: Duration = Duration::from_millis(200);
/// How long the agent may take to confirm a start.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a server closed for idleness may take to exit (the agent's escalation is 2 × 2 s).
const IDLE_EXIT_DEADLINE: Duration = Duration::from_secs(8);

/// What a session runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A server registered for the bot, by name.
    Registered(String),
    /// An ad hoc command.
    AdHoc(pb::McpOpen),
}

/// A session's two directions. Dropping `to_server` half-closes the server's stdin; dropping
/// `from_server` ends the session (the server is stopped).
pub struct SessionIo {
    pub to_server: mpsc::Sender<In>,
    pub from_server: mpsc::Receiver<Result<Out>>,
    /// The server's pid in the bot.
    pub pid: u32,
}

/// An agent-side session being relayed.
struct Upstream {
    tx: mpsc::Sender<pb::McpSessionRequest>,
    rx: Streaming<pb::McpSessionResponse>,
    started: pb::Started,
}

impl<P: Platform> McpHub<P> {
    /// Starts a session with `target` in `bot`. `idle_ms` = 0 means the configured idle timeout (a larger
    /// value is capped to it).
    pub async fn open(&self, bot: &str, target: Target, forward_stderr: bool, idle_ms: u32) -> Result<SessionIo> {
        let open = match target {
            Target::Registered(name) => {
                let s = self.get(bot, &name).await?;
                pb::McpOpen {
                    command: s.spec.command,
                    args: s.spec.args,
                    env: s.spec.env.into_iter().collect(),
                    cwd: s.spec.cwd,
                    forward_stderr,
                    tag: format!("mcp:{name}"),
                    ..Default::default()
                }
            }
            Target::AdHoc(o) => {
                if o.command.is_empty() {
                    return Err(Error::InvalidArgument("the MCP server command is empty".into()));
                }
                o
            }
        };
        let configured = self.config.idle_timeout;
        let idle = match idle_ms {
            0 => configured,
            ms => Duration::from_millis(ms.into()).min(configured),
        };
        // The bot's OOM kill count before the server runs: a SIGKILL later is named as the OOM killer's
        // when the count moved (the agent sees only the signal).
        let oom_before = self.manager.oom_kills(bot).await;
        let up = start_upstream(&self.manager, bot, &open).await?;
        let pid = up.started.pid;
        let (to_server, client_rx) = mpsc::channel(64);
        let (client_tx, from_server) = mpsc::channel(64);
        // The client learns the server's pid first (a restart before it spoke is not announced again).
        let _ = client_tx.try_send(Ok(Out::Started(up.started.clone())));
        let manager = self.manager.clone();
        let bot = bot.to_string();
        tokio::spawn(async move {
            let _open = crate::metrics::metrics().mcp_session();
            let starter = |b: String, o: pb::McpOpen| {
                let manager = manager.clone();
                async move { start_upstream(&manager, &b, &o).await }
            };
            let oom_now = {
                let manager = manager.clone();
                let bot = bot.clone();
                move || {
                    let manager = manager.clone();
                    let bot = bot.clone();
                    async move { manager.oom_kills(&bot).await }
                }
            };
            let ends = Ends { oom_before, oom_now };
            relay(up, client_rx, client_tx, idle, starter, bot, open, ends).await;
        });
        Ok(SessionIo { to_server, from_server, pid })
    }
}

async fn start_upstream<P: Platform>(
    manager: &crate::bots::BotManager<P>,
    bot: &str,
    open: &pb::McpOpen,
) -> Result<Upstream> {
    let mut agent = manager.agent(bot).await?;
    let (tx, rx) = mpsc::channel(64);
    let first = pb::McpSessionRequest { frame: Some(In::Open(open.clone())) };
    tx.send(first).await.map_err(|_| Error::Unavailable("the MCP session closed before it opened".into()))?;
    let mut rx = agent.mcp_session(ReceiverStream::new(rx)).await.map_err(crate::agent_client::to_error)?.into_inner();
    let started = match tokio::time::timeout(START_DEADLINE, rx.message()).await {
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "the agent of bot `{bot}` did not start the MCP server within 30 s"
            )));
        }
        Ok(Err(status)) => return Err(crate::agent_client::to_error(status)),
        Ok(Ok(Some(pb::McpSessionResponse { frame: Some(Out::Started(s)) }))) => s,
        Ok(Ok(other)) => {
            return Err(Error::Unavailable(format!("the agent of bot `{bot}` answered an MCP open with {other:?}")));
        }
    };
    tracing::debug!(bot.name = bot, pid = started.pid, command = %open.command, "MCP server started");
    Ok(Upstream { tx, rx, started })
}

/// How a session's end is explained: the bot's OOM kill count at its start, and a way to read it now.
struct Ends<O> {
    oom_before: Option<u64>,
    oom_now: O,
}

impl<O, OFut> Ends<O>
where
    O: Fn() -> OFut,
    OFut: std::future::Future<Output = Option<u64>>,
{
    /// Names a SIGKILL as the kernel's OOM killer's when the bot's count of OOM kills moved.
    async fn explain(&self, e: &mut pb::Exited) {
        if e.signal != Some(libc::SIGKILL) {
            return;
        }
        if let (Some(before), Some(now)) = (self.oom_before, (self.oom_now)().await)
            && now > before
        {
            e.message = format!(
                "{} by the kernel's OOM killer: the bot ran out of memory (its memory limit; raise it with \
                 `berth bot create --memory`, or close sessions it does not need)",
                e.message
            );
        }
    }
}

/// Relays one session until it ends (see the module's rules).
#[allow(clippy::too_many_arguments)] // the session's parts, each used once
async fn relay<F, Fut, O, OFut>(
    mut up: Upstream,
    mut client_rx: mpsc::Receiver<In>,
    client_tx: mpsc::Sender<Result<Out>>,
    idle: Duration,
    restart: F,
    bot: String,
    open: pb::McpOpen,
    ends: Ends<O>,
) where
    F: Fn(String, pb::McpOpen) -> Fut,
    Fut: std::future::Future<Output = Result<Upstream>>,
    O: Fn() -> OFut,
    OFut: std::future::Future<Output = Option<u64>>,
{
    let mut client_sent = false;
    let mut client_open = true;
    let mut attempts = 1;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = client_tx.closed() => {
                tracing::debug!(bot.name = %bot, pid = up.started.pid, "MCP client gone: the server is stopped");
                return;
            }
            frame = client_rx.recv(), if client_open => {
                let frame = frame.unwrap_or_else(|| {
                    client_open = false;
                    In::CloseStdin(pb::CloseStdin {})
                });
                if matches!(frame, In::Message(_)) {
                    client_sent = true;
                    last = Instant::now();
                }
                // A failed send means the agent ended the stream: its last frames say why, below.
                let _ = up.tx.send(pb::McpSessionRequest { frame: Some(frame) }).await;
            }
            r = up.rx.message() => {
                let frame = match r {
                    Ok(Some(pb::McpSessionResponse { frame: Some(f) })) => f,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        let _ = client_tx.send(Err(Error::Unavailable("the bot's agent ended the MCP session without an exit status".into()))).await;
                        return;
                    }
                    Err(s) => {
                        let _ = client_tx.send(Err(crate::agent_client::to_error(s))).await;
                        return;
                    }
                };
                match frame {
                    Out::Exited(e) if !client_sent && client_open && attempts < START_ATTEMPTS => {
                        let wait = RESTART_BACKOFF * 2u32.pow(attempts - 1);
                        tracing::warn!(bot.name = %bot, command = %open.command, attempts, exit = %e.message, "MCP server exited before its client sent anything; starting it again");
                        attempts += 1;
                        tokio::time::sleep(wait).await;
                        match restart(bot.clone(), open.clone()).await {
                            Ok(next) => up = next,
                            Err(err) => {
                                let _ = client_tx.send(Err(err)).await;
                                return;
                            }
                        }
                    }
                    Out::Exited(mut e) => {
                        ends.explain(&mut e).await;
                        if e.signal == Some(libc::SIGKILL) {
                            tracing::warn!(bot.name = %bot, command = %open.command, exit = %e.message, "MCP server killed");
                        }
                        let _ = client_tx.send(Ok(Out::Exited(e))).await;
                        return;
                    }
                    Out::Message(m) => {
                        last = Instant::now();
                        if client_tx.send(Ok(Out::Message(m))).await.is_err() {
                            return;
                        }
                    }
                    other => {
                        if client_tx.send(Ok(other)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last + idle) => {
                tracing::info!(bot.name = %bot, pid = up.started.pid, idle_ms = idle.as_millis() as u64, "MCP session idle: closing it");
                let exited = close_idle(&mut up).await;
                let mut e = exited.unwrap_or_default();
                e.reason = pb::ExitReason::Idle as i32;
                e.message = format!(
                    "no MCP message either way for {} s: berthd closed the idle session ({})",
                    idle.as_secs_f64(),
                    if e.message.is_empty() { "the server did not exit in time and was killed".into() } else { format!("server: {}", e.message) }
                );
                let _ = client_tx.send(Ok(Out::Exited(e))).await;
                return;
            }
        }
    }
}

/// Closes an idle server's stdin and waits (bounded) for the agent's exit report.
async fn close_idle(up: &mut Upstream) -> Option<pb::Exited> {
    let _ = up.tx.send(pb::McpSessionRequest { frame: Some(In::CloseStdin(pb::CloseStdin {})) }).await;
    let deadline = Instant::now() + IDLE_EXIT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, up.rx.message()).await {
            Ok(Ok(Some(pb::McpSessionResponse { frame: Some(Out::Exited(e)) }))) => return Some(e),
            Ok(Ok(Some(_))) => {}
            _ => return None,
        }
    }
}
