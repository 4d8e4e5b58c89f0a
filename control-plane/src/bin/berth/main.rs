//! The `berth` CLI. Today it has the direct-to-agent mode (`berth agent …`), for debugging a bot and for
//! driving an agent as a user would; the daemon commands arrive with `berthd`.

mod agent_cmd;
mod daemon;
mod data_cmd;
mod exec;
mod files;
mod mcp;
mod node;
mod procs;
mod progress;
mod tty;

use clap::Parser;

/// Berth: one container per bot, driven through containerd and an in-container agent.
#[derive(Debug, Parser)]
#[command(name = "berth", version)]
struct Cli {
    #[command(flatten)]
    conn: daemon::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage bots.
    #[command(subcommand)]
    Bot(daemon::BotCommand),
    /// Files in a bot: ls, stat, mkdir, rm, mv (paths written NAME:/path).
    #[command(subcommand)]
    Fs(daemon::FsCommand),
    /// Manage images.
    #[command(subcommand)]
    Image(daemon::ImageCommand),
    /// A bot's snapshots: create, ls, rollback, rm.
    #[command(subcommand)]
    Snapshot(data_cmd::SnapshotCommand),
    /// A bot's /data as an archive: export, import.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Long-running operations (snapshots, rollbacks, exports, imports, backups).
    #[command(subcommand)]
    Ops(data_cmd::OpsCommand),
    /// Run a command in a bot; its exit code becomes ours.
    Exec {
        /// The bot.
        name: String,
        #[command(flatten)]
        args: exec::ExecArgs,
    },
    /// A bot's detached processes (`berth exec -d`): id, tag, state, exit, bytes of output; `ps rm BOT
    /// ID…` forgets finished ones.
    #[command(args_conflicts_with_subcommands = true)]
    Ps {
        /// The bot.
        name: Option<String>,
        #[command(subcommand)]
        command: Option<procs::PsCommand>,
    },
    /// A detached process's output: `berth logs BOT ID [-f] [--from OFFSET] [--stream stderr]`.
    Logs(procs::LogsArgs),
    /// Attach to a detached process: our stdin to it, its output to us, until it ends.
    Attach {
        /// The bot.
        name: String,
        /// The process id.
        id: String,
    },
    /// Signal a detached process's group (SIGKILL unless `-s`).
    Kill {
        /// The bot.
        name: String,
        /// The process id.
        id: String,
        /// Signal number (e.g. 15 for SIGTERM).
        #[arg(short = 's', long, default_value_t = 9)]
        signal: i32,
    },
    /// Copy a file to or from a bot: `berth cp notes.md bot1:/data/notes.md` or the other way round.
    Cp {
        src: String,
        dst: String,
        /// Create missing parent directories in the bot.
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Relay MCP stdio to a server in a bot: `berth mcp BOT SERVER` (registered) or `berth mcp BOT -- CMD…`
    /// (an MCP client launches this in place of the server).
    Mcp {
        /// The bot.
        name: String,
        #[command(flatten)]
        args: mcp::BotMcpArgs,
    },
    /// A bot's registered MCP servers: add, ls, rm.
    #[command(subcommand)]
    McpServer(mcp::ServerCommand),
    /// The nodes of a cluster: ls, cordon, uncordon (the node answering is marked `*`).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Talk to one bot's agent directly over its socket (debugging, tests).
    Agent(agent_cmd::AgentArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Bot(cmd) => daemon::bot(&cli.conn, cmd).await,
            Command::Image(cmd) => daemon::image(&cli.conn, cmd).await,
            Command::Node(cmd) => node::node(&cli.conn, cmd).await,
            Command::Fs(cmd) => daemon::fs(&cli.conn, cmd).await,
            Command::Snapshot(cmd) => data_cmd::snapshot(&cli.conn, cmd).await,
            Command::Data(cmd) => data_cmd::data(&cli.conn, cmd).await,
            Command::Ops(cmd) => data_cmd::ops(&cli.conn, cmd).await,
            Command::Exec { name, args } if args.detach => {
                procs::start(&cli.conn, &name, args.detached_start(), args.request_id.clone()).await
            }
            Command::Exec { name, args } => exec::run(cli.conn.agent(&name).await?, args).await,
            Command::Ps { command: Some(cmd), .. } => procs::ps_command(&cli.conn, cmd).await,
            Command::Ps { name: Some(name), .. } => procs::ps(&cli.conn, &name).await,
            Command::Ps { .. } => Err(anyhow::anyhow!("name the bot: `berth ps BOT`")),
            Command::Logs(args) => procs::logs(&cli.conn, args).await,
            Command::Attach { name, id } => procs::attach(&cli.conn, &name, &id).await,
            Command::Kill { name, id, signal } => procs::kill(&cli.conn, &name, &id, signal).await,
            Command::Cp { src, dst, parents } => daemon::cp(&cli.conn, &src, &dst, parents).await,
            Command::Mcp { name, args } => mcp::run_bot(&cli.conn, name, args).await,
            Command::McpServer(cmd) => mcp::servers(&cli.conn, cmd).await,
            Command::Agent(args) => agent_cmd::run(args).await,
        }
    });
    let code = match code {
        Ok(code) => code,
        Err(e) => {
            // An error can quote a bot (an agent's words): its control characters are shown, not obeyed.
            eprintln!("berth: {}", shown(&format!("{e:#}")));
            1
        }
    };
    // Exit at once: a blocking stdin read may still be parked on a runtime thread.
    std::process::exit(code)
}

/// Text that can quote a bot (an agent's error, a file name it chose, its server's stderr), with its
/// control characters written out rather than sent to the terminal.
fn shown(text: &str) -> String {
    berth_control_plane::text::shown(text, usize::MAX)
}

/// [`shown`], on one line (a name or field in a table).
fn one_line(text: &str) -> String {
    berth_control_plane::text::one_line(text)
}
