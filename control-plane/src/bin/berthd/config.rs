//! berthd's configuration: one TOML file (`--config`), environment variables (`BERTH_…`) and flags, in
//! rising precedence over the built-in defaults. Every setting has the same name everywhere: the TOML key
//! `stop_timeout_ms` is the flag `--stop-timeout-ms` and the variable `BERTH_STOP_TIMEOUT_MS`. The flags'
//! help texts are the documentation, printed with each default by `--print-default-config`. Everything is
//! validated before berthd touches anything, and an error names the setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use berth_control_plane::daemon::{Config, LogFormat};
use clap::{CommandFactory, Parser};
use serde::{Deserialize, Serialize};

/// berthd: runs one container per bot through containerd and serves Berth's API.
///
/// Settings come from defaults, then the --config file, then BERTH_* environment variables, then flags.
#[derive(Debug, Parser, Serialize)]
#[command(name = "berthd", version)]
pub struct Args {
    /// Read settings from this TOML file (keys as printed by --print-default-config).
    #[arg(long, env = "BERTH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print every setting with its documentation and default, as a TOML file, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_default_config: bool,
    /// Check the configuration, print the effective settings (defaults, file, environment, flags merged)
    /// as TOML, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Bring the database to the current schema (apply pending migrations) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub migrate: bool,

    /// containerd's socket.
    #[arg(long, env = "BERTH_CONTAINERD_SOCKET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace holding Berth's bots and images.
    #[arg(long, env = "BERTH_NAMESPACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// Durable state: the SQLite database (by default), task logs, address leases, kept archives.
    #[arg(long, env = "BERTH_STATE_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    /// Runtime directory: one subdirectory per bot with its agent socket and token, network namespaces.
    #[arg(long, env = "BERTH_RUN_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    run_dir: Option<PathBuf>,
    /// Database URL: `sqlite://PATH?mode=rwc` or `postgres://…`; unset = SQLite in the state directory.
    #[arg(long, env = "BERTH_DATABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Unix socket to serve the API on (mode 0600); unset = <run_dir>/berthd.sock.
    #[arg(long, env = "BERTH_LISTEN_UNIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_unix: Option<PathBuf>,
    /// Also serve the API on this TCP address (IP:PORT); needs api_token_file.
    #[arg(long, env = "BERTH_LISTEN_TCP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_tcp: Option<SocketAddr>,
    /// PEM certificate (chain) for TLS on listen_tcp; with tls_key_file.
    #[arg(long, env = "BERTH_TLS_CERT_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for tls_cert_file.
    #[arg(long, env = "BERTH_TLS_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<PathBuf>,
    /// Serve listen_tcp without TLS on a non-loopback address (only behind a TLS-terminating proxy or on a
    /// private network).
    #[arg(long, env = "BERTH_ALLOW_PLAINTEXT_TCP", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_plaintext_tcp: Option<bool>,
    /// OCI image archives to import at start (flag repeatable; variable comma-separated).
    #[arg(long = "image-archive", env = "BERTH_IMAGE_ARCHIVES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    image_archives: Option<Vec<PathBuf>>,
    /// Image used when a create names none.
    #[arg(long, env = "BERTH_DEFAULT_IMAGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    default_image: Option<String>,
    /// File with the API tokens clients must present, one per line; unset = no auth (Unix socket only).
    #[arg(long, env = "BERTH_API_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_token_file: Option<PathBuf>,
    /// Default grace period of a stop before SIGKILL, in milliseconds.
    #[arg(long, env = "BERTH_STOP_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_timeout_ms: Option<u64>,
    /// How long a start waits for the bot's agent to answer, in milliseconds.
    #[arg(long, env = "BERTH_AGENT_READY_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_ready_timeout_ms: Option<u64>,
    /// The bots' bridge interface (1-15 characters).
    #[arg(long, env = "BERTH_BRIDGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
    /// The bots' IPv4 subnet (CIDR); the bridge takes its first address.
    #[arg(long, env = "BERTH_SUBNET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet: Option<String>,
    /// NAT the bots' outbound traffic (MASQUERADE), giving them access beyond the host (on by default: a
    /// bot whose egress allows it reaches the internet; `false` when the bots' subnet is routed instead).
    #[arg(long, env = "BERTH_MASQUERADE", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    masquerade: Option<bool>,
    /// Destinations (IPv4 CIDRs) no bot may reach, on top of the host itself and other bots (always
    /// refused). The default blocks link-local addresses, where cloud metadata services answer.
    #[arg(long = "egress-deny", env = "BERTH_EGRESS_DENY", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_deny: Option<Vec<String>>,
    /// Name servers (IP addresses) every bot's /etc/resolv.conf lists. Empty = the host's own, without
    /// loopback ones (a bot cannot reach the host's 127.0.0.53; systemd-resolved's upstream servers are
    /// used instead).
    #[arg(long = "dns-servers", env = "BERTH_DNS_SERVERS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_servers: Option<Vec<std::net::IpAddr>>,
    /// Where the CNI plugins are.
    #[arg(long, env = "BERTH_CNI_BIN_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cni_bin_dir: Option<PathBuf>,
    /// Network setup attempts (with backoff) before a create fails.
    #[arg(long, env = "BERTH_CNI_ATTEMPTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cni_attempts: Option<u32>,
    /// Registries (HOST[:PORT]) to pull from over plain HTTP instead of HTTPS.
    #[arg(long = "insecure-registry", env = "BERTH_INSECURE_REGISTRIES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_registries: Option<Vec<String>>,
    /// PEM files of CA certificates to trust for registries besides the public roots.
    #[arg(long = "registry-ca", env = "BERTH_REGISTRY_CAS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_cas: Option<Vec<PathBuf>>,
    /// How often the reconciler checks every bot, in milliseconds; 0 turns it off.
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile_interval_ms: Option<u64>,
    /// Largest expanded size of an imported data archive, in bytes (guards against decompression bombs).
    #[arg(long, env = "BERTH_IMPORT_MAX_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    import_max_bytes: Option<u64>,
    /// Memory limit of a bot created without one, in bytes; 0 = unlimited (then only an explicit limit
    /// binds a bot). Larger than the host's memory means the host's memory.
    #[arg(long, env = "BERTH_DEFAULT_MEMORY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    default_memory_bytes: Option<u64>,
    /// CPU limit of a bot created without one, in thousandths of a core; 0 = unlimited. More than the host
    /// has means all of the host's CPUs.
    #[arg(long, env = "BERTH_DEFAULT_CPU_MILLIS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    default_cpu_millis: Option<u64>,
    /// Process (and thread) limit of a bot created without one; 0 = unlimited.
    #[arg(long, env = "BERTH_DEFAULT_PIDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    default_pids: Option<u64>,
    /// Disk limit of a bot created without one (its writable layer: its files, /data included), in bytes;
    /// 0 = unlimited. Enforced where containerd's root is on btrfs (scripts/run.sh makes one).
    #[arg(long, env = "BERTH_DEFAULT_DISK_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    default_disk_bytes: Option<u64>,
    /// HTTP address (IP:PORT) for /metrics, /healthz and /readyz; `off` turns it off; port 0 picks one.
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    /// An MCP session with no message either way for this long is closed, in milliseconds (the most a
    /// client may ask for).
    #[arg(long, env = "BERTH_MCP_IDLE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_idle_timeout_ms: Option<u64>,
    /// The same for Streamable HTTP sessions, in milliseconds: shorter, since HTTP clients often leave
    /// without DELETE (at most mcp_idle_timeout_ms).
    #[arg(long, env = "BERTH_MCP_HTTP_IDLE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_http_idle_timeout_ms: Option<u64>,
    /// Most open Streamable HTTP sessions (one server process each) per bot and MCP server; opening one
    /// more closes the least recently used, telling its client why.
    #[arg(long, env = "BERTH_MCP_HTTP_MAX_SESSIONS_PER_SERVER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_http_max_sessions_per_server: Option<usize>,
    /// Most open Streamable HTTP sessions per bot, all its MCP servers together (same rule).
    #[arg(long, env = "BERTH_MCP_HTTP_MAX_SESSIONS_PER_BOT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_http_max_sessions_per_bot: Option<usize>,
    /// HTTP address (IP:PORT) of the MCP Streamable HTTP front-end (`/bots/BOT/mcp/SERVER`); `off` turns it
    /// off; port 0 picks one. Needs api_token_file: every request carries a bearer token.
    #[arg(long, env = "BERTH_MCP_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_listen: Option<String>,
    /// Host names the MCP front-end answers to besides loopback names and its own address (e.g. the name a
    /// TLS proxy forwards in Host); a request's Origin must use one of them too.
    #[arg(long = "mcp-allowed-host", env = "BERTH_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_allowed_hosts: Option<Vec<String>>,
    /// Log format: text or json.
    #[arg(long, env = "BERTH_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// Run as one node of a cluster: every node shares one PostgreSQL (database_url) and serves the same
    /// API. Needs listen_tcp.
    #[arg(long, env = "BERTH_CLUSTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<bool>,
    /// This node's name in the cluster (a-z, 0-9, '-', '.'); empty = the host name.
    #[arg(long, env = "BERTH_NODE_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<String>,
    /// HOST:PORT that peers and clients dial to reach this node; empty = listen_tcp (when it names an
    /// address rather than 0.0.0.0).
    #[arg(long, env = "BERTH_ADVERTISE_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_addr: Option<String>,
    /// A node whose heartbeat is older than this is marked lost by the others (its bots' calls fail
    /// UNAVAILABLE naming it). Heartbeats go every fifth of it.
    #[arg(long, env = "BERTH_NODE_LOST_AFTER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_lost_after_ms: Option<u64>,
    /// Memory this node offers bots, in bytes, against which their limits are placed; 0 = the host's.
    #[arg(long, env = "BERTH_NODE_MEMORY_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_memory_bytes: Option<u64>,
    /// CPU this node offers bots, in thousandths of a CPU; 0 = the host's.
    #[arg(long, env = "BERTH_NODE_CPU_MILLIS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_cpu_millis: Option<u64>,
    /// Most bots placed on this node.
    #[arg(long, env = "BERTH_NODE_MAX_BOTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_max_bots: Option<u64>,
    /// This node's labels (key=value), which `berth bot create --node-selector` matches.
    #[arg(long = "node-label", env = "BERTH_NODE_LABELS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_labels: Option<Vec<String>>,
    /// The cluster's shared secret (a file holding one line of at least 32 characters): a node presents it
    /// when it forwards a call to a bot's owner, with the caller's scope, over TLS when the nodes serve
    /// TLS. Needed in a cluster.
    #[arg(long, env = "BERTH_CLUSTER_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the nodes' certificates: with it a node dials its peers over TLS and checks
    /// them against it (needed when the nodes serve TLS, or a TLS proxy fronts them); without it peers are
    /// dialed in plaintext, which only loopback addresses or allow_plaintext_tcp allow.
    #[arg(long, env = "BERTH_CLUSTER_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_ca_file: Option<PathBuf>,
    /// In a cluster: the range every node's bot subnet is carved from (e.g. 10.200.0.0/14); each node takes
    /// a free /node_subnet_prefix of it when it first joins and keeps it (recorded in the database), in
    /// place of `subnet`. Empty = each node uses its own `subnet`.
    #[arg(long, env = "BERTH_CLUSTER_SUBNET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_subnet: Option<String>,
    /// The size of each node's share of cluster_subnet (a prefix length, at most 28).
    #[arg(long, env = "BERTH_NODE_SUBNET_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_subnet_prefix: Option<u8>,
    /// How long bot events are kept, in hours: WatchEvents resumes from any id still kept (at least 1).
    #[arg(long, env = "BERTH_EVENT_RETENTION_HOURS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_retention_hours: Option<u64>,
}

/// Defaults, then the file, then environment and flags (both already in `args`); validated.
pub fn load(args: &Args) -> anyhow::Result<Config> {
    let mut table = toml::Table::try_from(Config::default()).context("cannot represent the defaults")?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let file: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
        table.extend(file);
        Config::deserialize(table.clone()).with_context(|| format!("invalid setting in {}", path.display()))?;
    }
    table.extend(toml::Table::try_from(args).context("cannot represent the flags")?);
    let config = Config::deserialize(table).context("invalid setting in the environment or flags")?;
    config.validate()?;
    Ok(config)
}

/// Every setting as a commented TOML file: its help text, environment variable and default.
pub fn default_config_text() -> String {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut out = String::from(
        "# berthd configuration. Precedence: built-in defaults < this file < BERTH_* environment < flags.\n\
         # Every key is also a flag (--key-with-dashes) and an environment variable (shown below).\n",
    );
    for arg in Args::command().get_arguments() {
        let key = arg.get_id().as_str();
        if matches!(key, "config" | "print_default_config" | "print_config" | "migrate" | "help" | "version") {
            continue;
        }
        out.push('\n');
        for line in arg.get_help().map(|h| h.to_string()).unwrap_or_default().lines() {
            out.push_str(&format!("# {line}\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# Environment: {}\n", env.to_string_lossy()));
        }
        match defaults.get(key) {
            Some(v) => out.push_str(&format!("{key} = {v}\n")),
            None => out.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    out
}

/// Loads the configuration file at `path` alone over the defaults (for tests and `--check`).
#[cfg(test)]
fn load_file(path: &std::path::Path) -> anyhow::Result<Config> {
    let args = Args::parse_from(["berthd", "--config", path.to_str().unwrap_or_default()]);
    load(&args)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_defaults_document_every_setting_and_read_back_as_the_defaults() {
        let text = default_config_text();
        let table: toml::Table = text.parse().unwrap();
        let back = Config::deserialize(table).unwrap();
        assert_eq!(toml::Table::try_from(back).unwrap(), toml::Table::try_from(Config::default()).unwrap());
        // Every field of Config appears, set or commented, with a help line above it.
        let all = toml::Table::try_from(Config {
            database_url: Some(String::new()),
            listen_unix: Some(PathBuf::new()),
            listen_tcp: Some("127.0.0.1:1".parse().unwrap()),
            api_token_file: Some(PathBuf::new()),
            tls_cert_file: Some(PathBuf::new()),
            tls_key_file: Some(PathBuf::new()),
            ..Config::default()
        })
        .unwrap();
        for key in all.keys() {
            let at = text
                .find(&format!("\n{key} = "))
                .or_else(|| text.find(&format!("\n# {key} = (unset)")))
                .unwrap_or_else(|| panic!("{key} is not in the printed configuration"));
            let before = &text[..at];
            let help = before.rsplit("\n\n").next().unwrap();
            assert!(help.lines().count() >= 2, "{key} has no documentation:\n{help}");
        }
    }

    #[test]
    fn precedence_is_defaults_file_environment_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berthd.toml");
        std::fs::write(&file, "stop_timeout_ms = 1234\nbridge = \"fromfile\"\nmasquerade = true\n").unwrap();
        let c = load_file(&file).unwrap();
        assert_eq!((c.stop_timeout_ms, c.bridge.as_str(), c.masquerade), (1234, "fromfile", true));
        assert_eq!(c.namespace, "berth");
        let args = Args::parse_from(["berthd", "--config", file.to_str().unwrap(), "--bridge", "fromflag"]);
        let c = load(&args).unwrap();
        assert_eq!((c.stop_timeout_ms, c.bridge.as_str()), (1234, "fromflag"));
        let args = Args::parse_from(["berthd", "--config", file.to_str().unwrap(), "--masquerade", "false"]);
        assert!(!load(&args).unwrap().masquerade);
    }

    #[test]
    fn errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berthd.toml");
        let cases = [
            ("stop_timout_ms = 5\n", "stop_timout_ms"),
            ("stop_timeout_ms = \"soon\"\n", "stop_timeout_ms"),
            ("subnet = \"10.0.0.0\"\n", "subnet"),
            ("bridge = \"a-very-long-bridge-name\"\n", "bridge"),
            ("metrics_listen = \"anywhere\"\n", "metrics_listen"),
            ("listen_tcp = \"127.0.0.1:7000\"\n", "listen_tcp needs api_token_file"),
            ("listen_tcp = \"0.0.0.0:7000\"\napi_token_file = \"/t\"\n", "reachable from other hosts"),
            ("tls_cert_file = \"/c.pem\"\n", "give both or neither"),
            ("log_format = \"xml\"\n", "log_format"),
            ("egress_deny = [\"10.0.0.0/33\"]\n", "egress_deny"),
            ("not toml at all", "not valid TOML"),
            ("cluster = true\n", "cluster: needs database_url"),
            ("cluster = true\ndatabase_url = \"postgres://x/y\"\n", "cluster: needs listen_tcp"),
            (
                "cluster = true\ndatabase_url = \"postgres://x/y\"\nlisten_tcp = \"127.0.0.1:7000\"\napi_token_file = \"/t\"\n",
                "cluster: needs cluster_token_file",
            ),
            ("node_name = \"Node_1\"\n", "node_name"),
            ("node_labels = [\"zone\"]\n", "node_labels"),
            ("node_lost_after_ms = 10\n", "node_lost_after_ms"),
            ("cluster_subnet = \"10.0.0.0/16\"\nnode_subnet_prefix = 12\n", "node_subnet_prefix"),
            ("cluster_subnet = \"10.0.0/16\"\n", "cluster_subnet"),
        ];
        for (text, want) in cases {
            std::fs::write(&file, text).unwrap();
            let e = format!("{:#}", load_file(&file).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
