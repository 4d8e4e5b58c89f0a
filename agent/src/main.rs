//! The `berth-agent` binary: parse the command line, set up logging, serve until SIGTERM/SIGINT.

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::filter::Targets;

use berth_agent::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    // Not dumpable: the bot's processes (same uid, no CAP_SYS_PTRACE) can then neither ptrace the agent nor
    // read its memory, environment or descriptors through /proc/1. Children get the flag back at execve.
    // SAFETY: prctl with integer arguments touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        eprintln!("berth-agent: cannot mark the agent non-dumpable: {}", std::io::Error::last_os_error());
    }
    // `Targets` (e.g. "info,berth_agent=debug") rather than EnvFilter: no regex engine in the agent binary.
    let spec = std::env::var("BERTH_AGENT_LOG").unwrap_or_else(|_| "info".into());
    let filter: Targets = match spec.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth-agent: BERTH_AGENT_LOG={spec:?} is not a valid filter ({e}); using info");
            Targets::new().with_default(tracing::Level::INFO)
        }
    };
    // The fmt builder defaults to INFO; `filter` below decides. Colours only on a terminal: the task log
    // berthd quotes from gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.finish().with(filter).init(),
        LogFormat::Json => builder.json().finish().with(filter).init(),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(64).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async move { berth_agent::server::run(config, shutdown_signal()).await }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::error!(error = %msg, "berth-agent failed");
            eprintln!("berth-agent: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; the agent can only be stopped with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
