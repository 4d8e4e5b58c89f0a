//! The `berth` CLI. Today it has the direct-to-agent mode (`berth agent …`), for debugging a bot and for
//! driving an agent as a user would; the daemon commands arrive with `berthd`.

mod agent_cmd;
mod exec;
mod files;
mod mcp;
mod tty;

use clap::Parser;

/// Berth: one container per bot, driven through containerd and an in-container agent.
#[derive(Debug, Parser)]
#[command(name = "berth", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
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
            Command::Agent(args) => agent_cmd::run(args).await,
        }
    });
    let code = match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            1
        }
    };
    // Exit at once: a blocking stdin read may still be parked on a runtime thread.
    std::process::exit(code)
}
