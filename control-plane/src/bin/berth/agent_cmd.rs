//! `berth agent --socket PATH --token-file FILE <command>`: the direct-to-agent commands.

use std::path::PathBuf;

use anyhow::Context;
use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::agent::v1 as pb;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The agent's Unix socket.
    #[arg(long, required_unless_present = "tcp")]
    socket: Option<PathBuf>,
    /// The agent's TCP address (IP:port), instead of a socket.
    #[arg(long, conflicts_with = "socket")]
    tcp: Option<std::net::SocketAddr>,
    /// File holding the agent's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Run a command in the bot; its exit code becomes ours.
    Exec(crate::exec::ExecArgs),
    /// Copy a file to or from the bot; name the bot's side with a leading `:` (`cp a.txt :/data/a.txt`).
    Cp(crate::files::CpArgs),
    /// List a directory in the bot.
    Ls(crate::files::LsArgs),
    /// Describe a file in the bot.
    Stat(crate::files::StatArgs),
    /// Relay MCP stdio to a server started in the bot: an MCP client can launch this in place of the server.
    Mcp(crate::mcp::McpArgs),
    /// Show the agent's version and capabilities.
    Version,
    /// Show the agent's resource use and sessions.
    Stats,
    /// List running exec and MCP sessions.
    Ps,
    /// Signal a session's process group (SIGKILL by default).
    Kill {
        session_id: String,
        #[arg(long, default_value_t = 0)]
        signal: i32,
    },
}

/// Runs one agent command and returns the process exit code.
pub async fn run(args: AgentArgs) -> anyhow::Result<i32> {
    let auth = BearerAuth::from_file(&args.token_file)?;
    let client = match (&args.socket, args.tcp) {
        (Some(socket), _) => agent_client::connect_unix(socket, auth).await?,
        (None, Some(addr)) => agent_client::connect_tcp(addr, auth).await?,
        (None, None) => anyhow::bail!("give --socket or --tcp"),
    };
    match args.command {
        AgentCommand::Exec(a) => crate::exec::run(client, a).await,
        AgentCommand::Cp(a) => crate::files::cp(client, a).await.map(|()| 0),
        AgentCommand::Ls(a) => crate::files::ls(client, a).await.map(|()| 0),
        AgentCommand::Stat(a) => crate::files::stat(client, a).await.map(|()| 0),
        AgentCommand::Mcp(a) => crate::mcp::run(client, a).await,
        AgentCommand::Version => version(client).await.map(|()| 0),
        AgentCommand::Stats => stats(client).await.map(|()| 0),
        AgentCommand::Ps => ps(client).await.map(|()| 0),
        AgentCommand::Kill { session_id, signal } => {
            let mut client = client;
            client.kill_session(pb::KillSessionRequest { session_id, signal }).await.context("kill failed")?;
            Ok(0)
        }
    }
}

async fn version(mut client: AgentClient) -> anyhow::Result<()> {
    let v = client.version(pb::VersionRequest {}).await.context("version failed")?.into_inner();
    // The agent is the bot's to replace: what it says is shown on one line.
    println!("agent_version: {}", crate::one_line(&v.agent_version));
    println!("protocol_version: {}", v.protocol_version);
    println!("max_message_bytes: {}", v.max_message_bytes);
    println!("max_mcp_message_bytes: {}", v.max_mcp_message_bytes);
    println!("capabilities: {}", crate::one_line(&v.capabilities.join(" ")));
    Ok(())
}

async fn stats(mut client: AgentClient) -> anyhow::Result<()> {
    let s = client.stats(pb::StatsRequest {}).await.context("stats failed")?.into_inner();
    println!("pid: {}", s.pid);
    println!("rss_bytes: {}", s.rss_bytes);
    println!("uptime_ms: {}", s.uptime_ms);
    println!("exec_sessions: {}", s.exec_sessions);
    println!("mcp_sessions: {}", s.mcp_sessions);
    println!("child_processes: {}", s.child_processes);
    println!("zombies_reaped: {}", s.zombies_reaped);
    Ok(())
}

async fn ps(mut client: AgentClient) -> anyhow::Result<()> {
    let r = client.list_sessions(pb::ListSessionsRequest {}).await.context("listing sessions failed")?.into_inner();
    println!("{:<36}  {:<4}  {:>7}  {:<10}  COMMAND", "SESSION", "KIND", "PID", "TAG");
    for s in r.sessions {
        let kind = if s.kind == pb::SessionKind::Mcp as i32 { "mcp" } else { "exec" };
        let (id, tag, argv) =
            (crate::one_line(&s.session_id), crate::one_line(&s.tag), crate::one_line(&s.argv.join(" ")));
        println!("{id:<36}  {kind:<4}  {:>7}  {tag:<10}  {argv}", s.pid);
    }
    Ok(())
}
