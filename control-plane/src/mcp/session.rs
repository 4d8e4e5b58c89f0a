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
use tokio_stream::StreamExt;

use super::McpHub;
use crate::agent_client::{BotAgent, McpChannel, bot::McpFrames};
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
    tx: mpsc::Sender<In>,
    rx: McpFrames,
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

/// Opens the session on the bot's agent: connecting, the agent's answer and its `Started`, all within
/// [`START_DEADLINE`] (an agent that never answers cannot hold a session, first or restarted, open).
async fn start_upstream<P: Platform>(
    manager: &crate::bots::BotManager<P>,
    bot: &str,
    open: &pb::McpOpen,
) -> Result<Upstream> {
    match tokio::time::timeout(START_DEADLINE, open_upstream(manager, bot, open)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(format!(
            "the agent of bot `{bot}` did not start the MCP server within {} s",
            START_DEADLINE.as_secs()
        ))),
    }
}

async fn open_upstream<P: Platform>(
    manager: &crate::bots::BotManager<P>,
    bot: &str,
    open: &pb::McpOpen,
) -> Result<Upstream> {
    let agent = manager.agent(bot).await?;
    let McpChannel { to_agent: tx, from_agent: mut rx } = agent.mcp_session(open.clone()).await?;
    let started = match rx.next().await {
        Some(Err(e)) => return Err(e),
        Some(Ok(Some(Out::Started(s)))) => s,
        other => {
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
    /// Names a SIGKILL as the kernel's OOM killer's when the bot's count of OOM kills moved (and logs
    /// any SIGKILL).
    async fn explain(&self, mut e: pb::Exited, bot: &str, command: &str) -> pb::Exited {
        if e.signal != Some(libc::SIGKILL) {
            return e;
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
        tracing::warn!(bot.name = %bot, command, exit = %e.message, "MCP server killed");
        e
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
                let _ = up.tx.send(frame).await;
            }
            r = up.rx.next() => {
                let frame = match server_frame(r) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = client_tx.send(Err(e)).await;
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
                    Out::Exited(e) => {
                        let e = ends.explain(e, &bot, &open.command).await;
                        let _ = client_tx.send(Ok(Out::Exited(e))).await;
                        return;
                    }
                    other => {
                        if matches!(other, Out::Message(_)) {
                            last = Instant::now();
                        }
                        if client_tx.send(Ok(other)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last + idle) => {
                let e = close_idle(&mut up, &bot, idle).await;
                let _ = client_tx.send(Ok(Out::Exited(e))).await;
                return;
            }
        }
    }
}

/// One answer from the agent's side of the session: a frame, nothing to pass on, or why it ended.
fn server_frame(r: Option<Result<Option<Out>>>) -> Result<Option<Out>> {
    r.unwrap_or_else(|| Err(Error::Unavailable("the bot's agent ended the MCP session without an exit status".into())))
}

/// Closes an idle server's stdin, waits (bounded) for the agent's exit report and says why it ended.
async fn close_idle(up: &mut Upstream, bot: &str, idle: Duration) -> pb::Exited {
    tracing::info!(bot.name = %bot, pid = up.started.pid, idle_ms = idle.as_millis() as u64, "MCP session idle: closing it");
    let mut e = exit_report(up).await.unwrap_or_default();
    e.reason = pb::ExitReason::Idle as i32;
    e.message = format!(
        "no MCP message either way for {} s: berthd closed the idle session ({})",
        idle.as_secs_f64(),
        if e.message.is_empty() {
            "the server did not exit in time and was killed".into()
        } else {
            format!("server: {}", e.message)
        }
    );
    e
}

/// Closes the server's stdin and waits (bounded) for the agent's exit report.
async fn exit_report(up: &mut Upstream) -> Option<pb::Exited> {
    let _ = up.tx.send(In::CloseStdin(pb::CloseStdin {})).await;
    let deadline = Instant::now() + IDLE_EXIT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, up.rx.next()).await {
            Ok(Some(Ok(Some(Out::Exited(e))))) => return Some(e),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The relay's rules against the fake agent (an echo server): messages both ways untouched, the
    //! client's end closes the server's stdin, and an idle session is closed with the idle reason.

    use std::sync::Arc;

    use super::{In, Out, Target, pb};
    use crate::bots::CreateBot;
    use crate::mcp::{McpConfig, McpHub};
    use crate::store::Store;

    async fn hub() -> (Arc<McpHub<crate::bots::tests::Fakes>>, tempfile::TempDir) {
        let (m, dir) = crate::bots::tests::manager().await;
        m.create(CreateBot { name: "m".into(), ..Default::default() }).await.expect("create");
        m.start("m").await.expect("start");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
        (Arc::new(McpHub::new(m, store, McpConfig::default(), None)), dir)
    }

    fn echo() -> Target {
        Target::AdHoc(pb::McpOpen { command: "echo-server".into(), ..Default::default() })
    }

    #[tokio::test]
    async fn messages_go_both_ways_and_the_clients_end_closes_the_server() {
        let (hub, _dir) = hub().await;
        let mut io = hub.open("m", echo(), false, 0).await.expect("open");
        assert_eq!(io.pid, 4242);
        assert!(matches!(io.from_server.recv().await, Some(Ok(Out::Started(_)))));
        let msg = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec();
        io.to_server.send(In::Message(msg.clone())).await.expect("send");
        match io.from_server.recv().await {
            Some(Ok(Out::Message(m))) => assert_eq!(m, msg),
            other => panic!("expected the message back, got {other:?}"),
        }
        drop(io.to_server);
        match io.from_server.recv().await {
            Some(Ok(Out::Exited(e))) => assert_eq!(e.reason, pb::ExitReason::Exited as i32, "{e:?}"),
            other => panic!("expected the exit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_idle_session_is_closed_with_the_idle_reason() {
        let (hub, _dir) = hub().await;
        let mut io = hub.open("m", echo(), false, 50).await.expect("open");
        assert!(matches!(io.from_server.recv().await, Some(Ok(Out::Started(_)))));
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), io.from_server.recv()).await;
        match end.expect("closed within the deadline") {
            Some(Ok(Out::Exited(e))) => {
                assert_eq!(e.reason, pb::ExitReason::Idle as i32);
                assert!(e.message.contains("closed the idle session"), "{}", e.message);
            }
            other => panic!("expected the idle exit, got {other:?}"),
        }
    }
}
