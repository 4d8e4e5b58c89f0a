//! MCP from the command line:
//! - `berth mcp BOT SERVER` / `berth mcp BOT -- CMD ARGS…`: a byte-exact MCP stdio relay through berthd's
//!   `McpService` (a registered server, or an ad hoc command). Each line on our stdin becomes one message
//!   to the server; each message from the server becomes one line on our stdout. stdin EOF closes the
//!   server's stdin (MCP's graceful shutdown); we exit when the server does, with its exit code. An MCP
//!   client launches this in place of the server.
//! - `berth agent mcp -- CMD…`: the same relay straight to an agent.
//! - `berth mcp-server add|ls|rm`: the bot's registered servers.

use anyhow::Context;
use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use berth_proto::controlplane::v1 as cp;
use cp::mcp_service_client::McpServiceClient;
use pb::mcp_session_response::Frame as Out;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::daemon::{Conn, status_err};

/// Where and with what environment a server command runs in the bot.
#[derive(Debug, clap::Args)]
pub struct Launch {
    /// Working directory in the bot.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the server (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

impl Launch {
    /// The agent's open frame for `command` (the program, then its arguments).
    fn open(&self, command: &[String], forward_stderr: bool) -> anyhow::Result<pb::McpOpen> {
        let (program, args) = command.split_first().context("no server command given")?;
        Ok(pb::McpOpen {
            command: program.clone(),
            args: args.to_vec(),
            env: self.env.iter().cloned().collect(),
            cwd: self.cwd.clone().unwrap_or_default(),
            forward_stderr,
            ..Default::default()
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    #[command(flatten)]
    launch: Launch,
    /// Don't copy the server's stderr to ours.
    #[arg(long)]
    quiet: bool,
    /// The server command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `berth mcp BOT (SERVER | -- CMD ARGS…)`.
#[derive(Debug, clap::Args)]
pub struct BotMcpArgs {
    /// A server registered for the bot (`berth mcp-server add`); or give a command after `--`.
    #[arg(required_unless_present = "command", conflicts_with = "command")]
    server: Option<String>,
    /// For an ad hoc command.
    #[command(flatten)]
    launch: Launch,
    /// Don't copy the server's stderr to ours.
    #[arg(long)]
    quiet: bool,
    /// Close the session after this long without a message either way (capped by berthd's setting).
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u32>,
    /// An ad hoc server command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// Register a named MCP server for a bot: `berth mcp-server add BOT NAME -- CMD ARGS…`.
    Add {
        bot: String,
        name: String,
        #[command(flatten)]
        launch: Launch,
        /// Replace a server of the same name.
        #[arg(long)]
        replace: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List a bot's registered MCP servers.
    Ls {
        bot: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a registered MCP server.
    Rm { bot: String, name: String },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

async fn client(
    conn: &Conn,
) -> anyhow::Result<
    McpServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            berth_control_plane::agent_client::BearerAuth,
        >,
    >,
> {
    Ok(McpServiceClient::with_interceptor(conn.channel().await?, conn.auth()?)
        .max_decoding_message_size(berth_control_plane::api::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(berth_control_plane::api::MAX_MESSAGE_BYTES))
}

/// `berth mcp-server …`.
pub async fn servers(conn: &Conn, cmd: ServerCommand) -> anyhow::Result<i32> {
    let mut c = client(conn).await?;
    match cmd {
        ServerCommand::Add { bot, name, launch, replace, command } => {
            let open = launch.open(&command, false)?;
            let server = cp::McpServer {
                bot,
                name,
                command: open.command,
                args: open.args,
                env: open.env,
                cwd: open.cwd,
                created_at_ms: 0,
            };
            let s = c
                .register_mcp_server(cp::RegisterMcpServerRequest { server: Some(server), replace })
                .await
                .map_err(status_err("register the MCP server"))?
                .into_inner();
            println!("registered MCP server {} for bot {}", s.name, s.bot);
        }
        ServerCommand::Ls { bot, json } => {
            let list = c
                .list_mcp_servers(cp::ListMcpServersRequest { bot })
                .await
                .map_err(status_err("list MCP servers"))?
                .into_inner()
                .servers;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|s| {
                        serde_json::json!({"bot": s.bot, "name": s.name, "command": s.command, "args": s.args,
                            "env": s.env, "cwd": s.cwd, "created_at_ms": s.created_at_ms})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<24} COMMAND", "NAME");
                for s in list {
                    println!("{:<24} {} {}", s.name, s.command, s.args.join(" "));
                }
            }
        }
        ServerCommand::Rm { bot, name } => {
            c.remove_mcp_server(cp::RemoveMcpServerRequest { bot, name })
                .await
                .map_err(status_err("remove the MCP server"))?;
        }
    }
    Ok(0)
}

/// `berth mcp BOT …`: a session through berthd.
pub async fn run_bot(conn: &Conn, bot: String, a: BotMcpArgs) -> anyhow::Result<i32> {
    use cp::mcp_client_frame::Frame;
    let target = match a.server {
        Some(s) => cp::mcp_connect::Target::Server(s),
        None => cp::mcp_connect::Target::Command(a.launch.open(&a.command, !a.quiet)?),
    };
    let connect = cp::McpConnect {
        bot,
        target: Some(target),
        idle_timeout_ms: a.idle_timeout_ms.unwrap_or(0),
        forward_stderr: !a.quiet,
    };
    let (tx, rx) = mpsc::channel(64);
    tx.send(cp::McpClientFrame { frame: Some(Frame::Connect(connect)) }).await?;
    let responses = client(conn)
        .await?
        .mcp_session(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("cannot start the MCP server: {}", s.message()))?
        .into_inner();
    tokio::spawn(forward_stdin(tx, |m| cp::McpClientFrame { frame: Some(Frame::Message(m)) }));
    relay(responses).await
}

/// `berth agent mcp -- CMD…`: a session straight with an agent.
pub async fn run(mut client: AgentClient, a: McpArgs) -> anyhow::Result<i32> {
    use pb::mcp_session_request::Frame as In;
    let open = a.launch.open(&a.command, !a.quiet)?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::McpSessionRequest { frame: Some(In::Open(open)) }).await?;
    let responses = client
        .mcp_session(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("cannot start the MCP server: {}", s.message()))?
        .into_inner();
    tokio::spawn(forward_stdin(tx, |m| pb::McpSessionRequest { frame: Some(In::Message(m)) }));
    relay(responses).await
}

/// Writes the server's messages to stdout (one line each) and its stderr to ours, until it exits.
async fn relay(mut responses: tonic::Streaming<pb::McpSessionResponse>) -> anyhow::Result<i32> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let msg = responses
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("MCP session failed: {}", s.message()))?
            .context("the MCP session ended without an exit status")?;
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
                if e.reason != pb::ExitReason::Exited as i32 || e.exit_code.unwrap_or(0) != 0 || e.signal.is_some() {
                    eprintln!("berth: MCP server {}", crate::shown(&e.message));
                    if !e.stderr_tail.is_empty() {
                        eprintln!(
                            "berth: its stderr ended with:\n{}",
                            crate::shown(&String::from_utf8_lossy(&e.stderr_tail))
                        );
                    }
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

/// Sends each stdin line as one message; EOF half-closes the stream (the sender is dropped).
async fn forward_stdin<T>(tx: mpsc::Sender<T>, frame: impl Fn(Vec<u8>) -> T) {
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
                if tx.send(frame(line)).await.is_err() {
                    return;
                }
            }
        }
    }
}
