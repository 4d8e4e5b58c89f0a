//! `berth agent mcp -- CMD ARGS…`: a byte-exact MCP stdio relay. Each line on our stdin becomes one
//! message to the server; each message from the server becomes one line on our stdout. stdin EOF closes
//! the server's stdin (MCP's graceful shutdown); we exit when the server does, with its exit code.

use anyhow::Context;
use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// Working directory in the bot.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the server (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Don't copy the server's stderr to ours.
    #[arg(long)]
    quiet: bool,
    /// The server command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

pub async fn run(mut client: AgentClient, a: McpArgs) -> anyhow::Result<i32> {
    let (command, args) = a.command.split_first().context("no server command given")?;
    let open = pb::McpOpen {
        command: command.clone(),
        args: args.to_vec(),
        env: a.env.iter().cloned().collect(),
        cwd: a.cwd.clone().unwrap_or_default(),
        forward_stderr: !a.quiet,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::McpSessionRequest { frame: Some(In::Open(open)) }).await?;
    let mut responses = client
        .mcp_session(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("cannot start the MCP server: {}", s.message()))?
        .into_inner();
    tokio::spawn(forward_stdin(tx));
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let msg = responses
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("MCP session failed: {}", s.message()))?
            .context("the agent ended the MCP session without an exit status")?;
        match msg.frame {
            Some(Out::Message(mut line)) => {
                line.push(b'\n');
                stdout.write_all(&line).await?;
                stdout.flush().await?;
            }
            Some(Out::Stderr(b)) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
            Some(Out::Exited(e)) => {
                if e.reason != pb::ExitReason::Exited as i32 || e.exit_code.unwrap_or(0) != 0 {
                    eprintln!("berth: MCP server {}", e.message);
                }
                return Ok(match (e.exit_code, e.signal) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    _ => 1,
                });
            }
            Some(Out::Started(_)) | None => {}
        }
    }
}

/// Sends each stdin line as one message; EOF half-closes the stream.
async fn forward_stdin(tx: mpsc::Sender<pb::McpSessionRequest>) {
    let mut stdin = BufReader::with_capacity(1 << 20, tokio::io::stdin());
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                if tx.send(pb::McpSessionRequest { frame: Some(In::Message(line)) }).await.is_err() {
                    return;
                }
            }
        }
    }
}
