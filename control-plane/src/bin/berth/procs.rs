//! Detached processes from the CLI: `berth exec -d` starts one, `berth ps` lists them (`ps rm` removes
//! finished ones), `berth logs` reads (and follows) their output, resuming from the last offset it
//! printed when the connection drops, `berth attach` feeds stdin at offsets and follows the output,
//! `berth kill` signals them.

use std::time::Duration;

use anyhow::Context;
use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::{Conn, status_err};

/// How often a dropped `logs -f` or `attach` reconnects before giving up.
const RECONNECTS: u32 = 30;
/// What `attach` shows of a terminal process's past output, so the screen is not blank.
const ATTACH_BACKLOG: u64 = 16 << 10;

#[derive(Debug, clap::Subcommand)]
pub enum PsCommand {
    /// Forget finished detached processes and remove their output.
    Rm {
        /// The bot.
        name: String,
        /// Process ids (from `berth ps`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The bot.
    name: String,
    /// The process id (from `berth ps` or `berth exec -d`).
    id: String,
    /// Keep following new output until the process ends.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Start at this byte offset of the stream (what a previous read ended at).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Which stream (printed to our stdout either way).
    #[arg(long, value_enum, default_value = "stdout")]
    stream: Stream,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn proto(self) -> pb::OutputStream {
        match self {
            Stream::Stdout => pb::OutputStream::Stdout,
            Stream::Stderr => pb::OutputStream::Stderr,
        }
    }
}

/// `berth exec -d`: starts the command detached, retrying the start (same request id) on a dropped
/// connection, and prints its id.
pub async fn start(conn: &Conn, name: &str, start: pb::ExecStart, request_id: Option<String>) -> anyhow::Result<i32> {
    let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let req = pb::StartProcessRequest { request_id, start: Some(start), journal_bytes: 0 };
    let mut last = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let mut c = match conn.agent(name).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match c.start_process(req.clone()).await {
            Ok(r) => {
                println!("{}", crate::one_line(&r.into_inner().id));
                return Ok(0);
            }
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                last = Some(anyhow::anyhow!("start failed: {}", s.message()));
            }
            Err(s) => return Err(status_err("start")(s)),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("start failed")))
}

/// `berth ps BOT`: a table of the bot's detached processes.
pub async fn ps(conn: &Conn, name: &str) -> anyhow::Result<i32> {
    let mut c = conn.agent(name).await?;
    let list = c.list_processes(pb::ListProcessesRequest {}).await.map_err(status_err("ps"))?.into_inner();
    println!(
        "{:<12}  {:<12}  {:<8}  {:>7}  {:<20}  {:<22}  {:>10}  {:>10}  COMMAND",
        "ID", "TAG", "STATE", "PID", "STARTED", "EXIT", "STDOUT", "STDERR"
    );
    for p in list.processes {
        let state = match pb::ProcessState::try_from(p.state) {
            Ok(pb::ProcessState::Running) => "running",
            Ok(pb::ProcessState::Exited) => "exited",
            Ok(pb::ProcessState::Lost) => "lost",
            _ => "?",
        };
        // Process records are the bot's to rewrite: every field is shown on one line.
        let exit = p.exit.as_ref().map(|e| crate::one_line(&e.message)).unwrap_or_default();
        let bytes = |s: &Option<pb::OutputSpan>| s.as_ref().map_or(0, |s| s.end);
        println!(
            "{:<12}  {:<12}  {:<8}  {:>7}  {:<20}  {:<22}  {:>10}  {:>10}  {}",
            crate::one_line(&p.id),
            crate::one_line(&p.tag),
            state,
            p.pid,
            started(p.started_at_ms),
            exit,
            bytes(&p.stdout),
            bytes(&p.stderr),
            crate::one_line(&p.argv.join(" "))
        );
    }
    Ok(0)
}

/// `berth ps rm BOT ID…`.
pub async fn ps_command(conn: &Conn, cmd: PsCommand) -> anyhow::Result<i32> {
    match cmd {
        PsCommand::Rm { name, ids } => {
            let mut c = conn.agent(&name).await?;
            for id in ids {
                c.remove_process(pb::RemoveProcessRequest { id: id.clone() }).await.map_err(status_err("rm"))?;
                println!("removed {id}");
            }
            Ok(0)
        }
    }
}

/// `berth kill BOT ID [-s SIG]`.
pub async fn kill(conn: &Conn, name: &str, id: &str, signal: i32) -> anyhow::Result<i32> {
    let mut c = conn.agent(name).await?;
    c.signal_process(pb::SignalProcessRequest { id: id.into(), signal }).await.map_err(status_err("kill"))?;
    Ok(0)
}

/// `berth logs`: prints the stream (stdout or stderr) to our stdout from `--from`; with `-f`, follows it to the process's end, resuming
/// from the last byte printed whenever the connection drops. Exits with the process's status when
/// following.
pub async fn logs(conn: &Conn, a: LogsArgs) -> anyhow::Result<i32> {
    // The stream asked for goes to our stdout, whichever it is (our stderr carries only our own notes), so
    // `--from` offsets count the bytes a redirect wrote.
    let mut out = tokio::io::stdout();
    follow(conn, &a.name, &a.id, a.stream.proto(), a.from, a.follow, &mut out).await
}

/// Reads a stream from `offset` into `out`, reconnecting on a dropped connection (never on a refusal).
async fn follow(
    conn: &Conn,
    name: &str,
    id: &str,
    stream: pb::OutputStream,
    mut offset: u64,
    follow: bool,
    out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
) -> anyhow::Result<i32> {
    let mut drops = 0;
    loop {
        let req = pb::ReadOutputRequest { id: id.into(), stream: stream as i32, offset, follow };
        let read = async { conn.agent(name).await?.read_output(req).await.map_err(status_err("logs")) };
        let mut s = match read.await {
            Ok(r) => r.into_inner(),
            Err(e) if drops < RECONNECTS && is_transient(&e) => {
                drops += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        loop {
            match s.message().await {
                Ok(Some(chunk)) => {
                    if let Some(e) = chunk.exited {
                        return Ok(exit_code(&e));
                    }
                    out.write_all(&chunk.data).await?;
                    out.flush().await?;
                    offset = chunk.offset + chunk.data.len() as u64;
                }
                Ok(None) => return Ok(0),
                Err(st) if drops < RECONNECTS && transient(st.code()) => {
                    drops += 1;
                    eprintln!(
                        "berth: the output stream broke ({}); resuming from offset {offset}",
                        crate::shown(st.message())
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Err(st) => return Err(status_err("logs")(st)),
            }
        }
    }
}

fn started(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    berth_control_plane::time::rfc3339(at).chars().take(19).collect()
}

fn transient(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal)
}

fn is_transient(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("connect") || s.contains("unavailable") || s.contains("transport")
}

fn exit_code(e: &pb::Exited) -> i32 {
    match (e.exit_code, e.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

/// `berth attach BOT ID`: our stdin goes to the process (at offsets, so nothing is written twice after
/// a reconnect), its output (a terminal's recent screen first) to our stdout, until it ends.
pub async fn attach(conn: &Conn, name: &str, id: &str) -> anyhow::Result<i32> {
    let mut c: AgentClient = conn.agent(name).await?;
    let info = c.get_process(pb::GetProcessRequest { id: id.into() }).await.map_err(status_err("attach"))?.into_inner();
    let span = info.stdout.unwrap_or_default();
    let from = if info.pty { span.end.saturating_sub(ATTACH_BACKLOG).max(span.first) } else { span.end };
    let _raw = if info.pty { crate::tty::RawMode::enter() } else { None };
    if info.pty {
        let (rows, cols) = crate::tty::size();
        let size = Some(pb::PtySize { rows, cols });
        let _ = c.resize_process(pb::ResizeProcessRequest { id: id.into(), size }).await;
    }
    let resizes = info.pty.then(|| tokio::spawn(forward_resizes(c.clone(), id.to_string())));
    let input = tokio::spawn(feed_stdin(c, id.to_string(), info.stdin_offset));
    let mut stdout = tokio::io::stdout();
    let code = follow(conn, name, id, pb::OutputStream::Stdout, from, true, &mut stdout).await;
    input.abort();
    if let Some(r) = resizes {
        r.abort();
    }
    code
}

/// Gives a terminal process our terminal's size whenever it changes.
async fn forward_resizes(mut c: AgentClient, id: String) {
    let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        let (rows, cols) = crate::tty::size();
        let size = Some(pb::PtySize { rows, cols });
        if c.resize_process(pb::ResizeProcessRequest { id: id.clone(), size }).await.is_err() {
            return;
        }
    }
}

async fn feed_stdin(mut c: AgentClient, id: String, mut offset: u64) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = stdin.read(&mut buf).await.context("read stdin")?;
        let req = pb::WriteStdinRequest { id: id.clone(), offset, data: buf[..n].to_vec(), close: n == 0 };
        offset = c.write_stdin(req).await.map_err(status_err("write stdin"))?.into_inner().offset;
        if n == 0 {
            return Ok(());
        }
    }
}
