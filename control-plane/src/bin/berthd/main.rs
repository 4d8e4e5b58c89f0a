//! `berthd`: the Berth control plane daemon. Reads its configuration (`config.rs`), sets up logging, and
//! runs the daemon (`berth_control_plane::daemon`) until SIGTERM or SIGINT; bots keep running after it.

use anyhow::Context;
use berth_control_plane::daemon::{self, Daemon, LogFormat};
use clap::Parser;
use config::Args;
use tokio::signal::unix::{SignalKind, signal};

mod config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Args::parse();
    if cli.print_default_config {
        print!("{}", config::default_config_text());
        return Ok(());
    }
    let config = config::load(&cli)?;
    if cli.print_config {
        print!("{}", toml::to_string(&config).context("cannot print the configuration")?);
        return Ok(());
    }
    // A field can quote a bot (an agent's error, an MCP server's stderr): each text record stays on its
    // line with its control characters written out (so no colours either); JSON escapes them itself.
    let log = tracing_subscriber::fmt();
    match config.log_format {
        LogFormat::Text => {
            log.with_ansi(false).with_writer(|| berth_control_plane::text::OneLine(std::io::stderr())).init()
        }
        LogFormat::Json => log.with_writer(std::io::stderr).json().with_current_span(true).with_span_list(false).init(),
    }
    if cli.migrate {
        daemon::migrate(&config).await?;
        tracing::info!("the database schema is current");
        return Ok(());
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(config).await?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    daemon.stop().await;
    Ok(())
}
