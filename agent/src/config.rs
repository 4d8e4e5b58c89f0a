//! The agent's command line. Everything the agent needs is given here; it reads no config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// berth-agent: file I/O, exec and MCP stdio sessions over gRPC, run as PID 1 in a bot container.
#[derive(Debug, Clone, Parser)]
#[command(name = "berth-agent", version)]
pub struct Config {
    /// Unix socket to listen on (its directory is usually bind-mounted from the host).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// File holding the bearer token every RPC must present.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Also listen on this TCP address (an IP and port; names are not resolved).
    #[arg(long)]
    pub listen_tcp: Option<SocketAddr>,
    /// Directory that client paths are confined to.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where relative client paths (and execs without a cwd) start, as a path inside the root.
    #[arg(long, default_value = "/data")]
    pub data_dir: String,
    /// Largest MCP message (one line of a server's stdout) relayed, in bytes.
    #[arg(long, default_value_t = crate::state::MAX_MCP_MESSAGE_BYTES)]
    pub max_mcp_message_bytes: usize,
    /// Directory holding the user cgroup's `*.procs` files: every child joins that cgroup (see
    /// `process::cgroup`). Without it, children stay in the agent's cgroup.
    #[arg(long, conflicts_with = "user_cgroup_from")]
    pub user_cgroup: Option<PathBuf>,
    /// Unix socket on which the control plane hands over the user cgroup's `cgroup.procs` descriptors
    /// (see `process::cgroup::receive`); the agent serves nothing until it has them.
    #[arg(long)]
    pub user_cgroup_from: Option<PathBuf>,
    /// How long to wait for that handoff before giving up (exiting), in seconds.
    #[arg(long, default_value_t = 60)]
    pub user_cgroup_wait_secs: u64,
    /// Where detached processes' records and output journals are kept (default: `var/lib/berth-agent/
    /// processes` under the root, so they outlive a restart of the agent with the bot's files).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The most output all detached processes may keep together, in bytes (each reserves its journal
    /// limit per stream until it is removed).
    #[arg(long, default_value_t = crate::process::detached::DEFAULT_TOTAL_JOURNAL_BYTES)]
    pub max_journal_bytes_total: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
