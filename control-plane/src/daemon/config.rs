//! berthd's effective settings, as the daemon takes them: every field, its default and the checks types
//! alone do not make (each error names its setting). Where they come from (a TOML file, `BERTH_…`
//! variables, flags) is the binary's business (`bin/berthd/config.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A setting that is not acceptable; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

macro_rules! bail {
    ($($t:tt)*) => { return Err(ConfigError(format!($($t)*))) };
}

/// How berthd writes its log (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, with span fields (bot name, operation id).
    Json,
}

/// The effective settings (berthd's `--help` and `--print-default-config` say what each one means).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub database_url: Option<String>,
    pub listen_unix: Option<PathBuf>,
    pub listen_tcp: Option<SocketAddr>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub allow_plaintext_tcp: bool,
    pub image_archives: Vec<PathBuf>,
    pub default_image: String,
    pub api_token_file: Option<PathBuf>,
    pub stop_timeout_ms: u64,
    pub agent_ready_timeout_ms: u64,
    pub bridge: String,
    pub subnet: String,
    pub masquerade: bool,
    pub egress_deny: Vec<String>,
    pub dns_servers: Vec<std::net::IpAddr>,
    pub cni_bin_dir: PathBuf,
    pub cni_attempts: u32,
    pub insecure_registries: Vec<String>,
    pub registry_cas: Vec<PathBuf>,
    pub reconcile_interval_ms: u64,
    pub import_max_bytes: u64,
    pub default_memory_bytes: u64,
    pub default_cpu_millis: u64,
    pub default_pids: u64,
    pub default_disk_bytes: u64,
    pub metrics_listen: String,
    pub mcp_idle_timeout_ms: u64,
    pub mcp_http_idle_timeout_ms: u64,
    pub mcp_http_max_sessions_per_server: usize,
    pub mcp_http_max_sessions_per_bot: usize,
    pub mcp_listen: String,
    pub mcp_allowed_hosts: Vec<String>,
    pub log_format: LogFormat,
    pub cluster: bool,
    pub node_name: String,
    pub advertise_addr: String,
    pub node_lost_after_ms: u64,
    pub node_memory_bytes: u64,
    pub node_cpu_millis: u64,
    pub node_max_bots: u64,
    pub node_labels: Vec<String>,
    pub cluster_token_file: Option<PathBuf>,
    pub cluster_ca_file: Option<PathBuf>,
    pub cluster_subnet: String,
    pub node_subnet_prefix: u8,
    pub event_retention_hours: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            containerd_socket: "/run/containerd/containerd.sock".into(),
            namespace: "berth".into(),
            state_dir: "/var/lib/berth".into(),
            run_dir: "/run/berth".into(),
            database_url: None,
            listen_unix: None,
            listen_tcp: None,
            tls_cert_file: None,
            tls_key_file: None,
            allow_plaintext_tcp: false,
            image_archives: Vec::new(),
            default_image: "berth/minimal:latest".into(),
            api_token_file: None,
            stop_timeout_ms: 10_000,
            agent_ready_timeout_ms: 15_000,
            bridge: "berth0".into(),
            subnet: "10.213.0.0/16".into(),
            masquerade: true,
            egress_deny: vec!["169.254.0.0/16".into()],
            dns_servers: Vec::new(),
            cni_bin_dir: "/usr/lib/cni".into(),
            cni_attempts: 4,
            insecure_registries: Vec::new(),
            registry_cas: Vec::new(),
            reconcile_interval_ms: 5_000,
            import_max_bytes: 64 << 30,
            default_memory_bytes: 2 << 30,
            default_cpu_millis: 2000,
            default_pids: 1024,
            default_disk_bytes: 10 << 30,
            metrics_listen: "127.0.0.1:9464".into(),
            mcp_idle_timeout_ms: 15 * 60 * 1000,
            mcp_http_idle_timeout_ms: 5 * 60 * 1000,
            mcp_http_max_sessions_per_server: 4,
            mcp_http_max_sessions_per_bot: 8,
            mcp_listen: "off".into(),
            mcp_allowed_hosts: Vec::new(),
            log_format: LogFormat::Text,
            cluster: false,
            node_name: String::new(),
            advertise_addr: String::new(),
            node_lost_after_ms: 10_000,
            node_memory_bytes: 0,
            node_cpu_millis: 0,
            node_max_bots: 1000,
            node_labels: Vec::new(),
            cluster_token_file: None,
            cluster_ca_file: None,
            cluster_subnet: String::new(),
            node_subnet_prefix: 24,
            event_retention_hours: 168,
        }
    }
}

impl Config {
    /// Checks what types alone do not; each error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.event_retention_hours == 0 {
            bail!("event_retention_hours: 0 would keep no event to resume from (at least 1)");
        }
        if self.namespace.is_empty() {
            bail!("namespace: must not be empty");
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            bail!("bridge: {:?} must be 1-15 characters (a Linux interface name)", self.bridge);
        }
        check_subnet(&self.subnet)
            .map_err(|e| ConfigError(format!("subnet: {:?} is not an IPv4 subnet: {e}", self.subnet)))?;
        for cidr in &self.egress_deny {
            crate::network::check_cidr(cidr).map_err(|e| ConfigError(format!("egress_deny: {e}")))?;
        }
        if self.cni_attempts == 0 {
            bail!("cni_attempts: must be at least 1");
        }
        if self.agent_ready_timeout_ms < 100 {
            bail!("agent_ready_timeout_ms: {} is too short (at least 100 ms)", self.agent_ready_timeout_ms);
        }
        if self.listen_tcp.is_some() && self.api_token_file.is_none() {
            bail!("listen_tcp needs api_token_file: TCP is never served without authentication");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            bail!("tls_cert_file and tls_key_file: give both or neither");
        }
        if let Some(addr) = self.listen_tcp
            && !addr.ip().is_loopback()
            && self.tls_cert_file.is_none()
            && !self.allow_plaintext_tcp
        {
            bail!(
                "listen_tcp: {addr} is reachable from other hosts; give tls_cert_file and tls_key_file, or set \
                 allow_plaintext_tcp if a TLS proxy or a private network protects it"
            );
        }
        self.metrics_addr()?;
        use crate::bots::limits;
        for (name, v, min) in [
            ("default_memory_bytes", self.default_memory_bytes, limits::MIN_MEMORY_BYTES),
            ("default_cpu_millis", self.default_cpu_millis, limits::MIN_CPU_MILLIS),
            ("default_pids", self.default_pids, limits::MIN_PIDS),
            ("default_disk_bytes", self.default_disk_bytes, limits::MIN_DISK_BYTES),
        ] {
            if v != 0 && v < min {
                bail!("{name}: {v} is below the smallest limit, {min} (0 = unlimited)");
            }
        }
        if self.default_pids > limits::MAX_PIDS {
            bail!("default_pids: {} is above the largest limit, {}", self.default_pids, limits::MAX_PIDS);
        }
        if self.mcp_idle_timeout_ms < 1000 {
            bail!("mcp_idle_timeout_ms: {} is too short (at least 1000 ms)", self.mcp_idle_timeout_ms);
        }
        if self.mcp_http_idle_timeout_ms < 1000 {
            bail!("mcp_http_idle_timeout_ms: {} is too short (at least 1000 ms)", self.mcp_http_idle_timeout_ms);
        }
        if self.mcp_http_max_sessions_per_server == 0 || self.mcp_http_max_sessions_per_bot == 0 {
            bail!("mcp_http_max_sessions_per_server and mcp_http_max_sessions_per_bot: at least 1");
        }
        if self.mcp_addr()?.is_some() && self.api_token_file.is_none() {
            bail!("mcp_listen needs api_token_file: the MCP front-end is never served without authentication");
        }
        self.validate_cluster()
    }

    /// The cluster settings (checked whether or not `cluster` is on, so a typo waits for no one).
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if !self.node_name.is_empty() {
            check_node_name(&self.node_name).map_err(|e| ConfigError(format!("node_name: {e}")))?;
        }
        self.node_labels()?;
        if self.node_lost_after_ms < 500 {
            bail!("node_lost_after_ms: {} is too short (at least 500 ms)", self.node_lost_after_ms);
        }
        if self.node_max_bots == 0 {
            bail!("node_max_bots: must be at least 1");
        }
        if !self.cluster_subnet.is_empty() {
            check_subnet(&self.cluster_subnet).map_err(|e| {
                ConfigError(format!("cluster_subnet: {:?} is not an IPv4 subnet: {e}", self.cluster_subnet))
            })?;
            let range: u8 = self.cluster_subnet.split_once('/').and_then(|(_, l)| l.parse().ok()).unwrap_or(0);
            if self.node_subnet_prefix < range || self.node_subnet_prefix > 28 {
                bail!(
                    "node_subnet_prefix: /{} must lie between cluster_subnet's /{range} and /28",
                    self.node_subnet_prefix
                );
            }
        }
        if !self.cluster {
            return Ok(());
        }
        if !self.database().starts_with("postgres") {
            bail!(
                "cluster: needs database_url = \"postgres://…\", the PostgreSQL every node shares; SQLite is one \
                 host's own file"
            );
        }
        if self.listen_tcp.is_none() {
            bail!("cluster: needs listen_tcp, where peers and clients reach this node (advertise_addr if it differs)");
        }
        if self.cluster_token_file.is_none() {
            bail!(
                "cluster: needs cluster_token_file, the secret every node of the cluster shares and presents to the \
                 others when it forwards a call"
            );
        }
        if self.tls_cert_file.is_some() && self.cluster_ca_file.is_none() {
            bail!(
                "cluster_ca_file: needed with tls_cert_file in a cluster: the CA that signed the nodes' certificates, \
                 which a node checks when it dials a peer"
            );
        }
        self.advertise_addr()?;
        Ok(())
    }

    /// What peers and clients dial to reach this node: `advertise_addr`, else `listen_tcp` when its IP is
    /// a specific one (with port 0, the daemon advertises the port it bound).
    pub fn advertise_addr(&self) -> Result<String, ConfigError> {
        if !self.advertise_addr.is_empty() {
            let ok =
                self.advertise_addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("advertise_addr: {:?} is not HOST:PORT", self.advertise_addr);
            }
            return Ok(self.advertise_addr.clone());
        }
        match self.listen_tcp {
            // Port 0: the port bound at start (see `daemon::join_cluster`).
            Some(a) if !a.ip().is_unspecified() => Ok(a.to_string()),
            Some(a) => bail!("advertise_addr: needed, since listen_tcp ({a}) does not say which address peers dial"),
            None => bail!("advertise_addr: needed (or listen_tcp)"),
        }
    }

    /// `node_labels` as a map (each `key=value`).
    pub fn node_labels(&self) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
        let mut out = std::collections::BTreeMap::new();
        for l in &self.node_labels {
            match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    out.insert(k.to_string(), v.to_string());
                }
                _ => bail!("node_labels: {l:?} is not key=value"),
            }
        }
        Ok(out)
    }

    /// The MCP front-end's address; `None` when turned off.
    pub fn mcp_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        optional_addr("mcp_listen", &self.mcp_listen)
    }

    /// The metrics address; `None` when turned off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        optional_addr("metrics_listen", &self.metrics_listen)
    }

    /// The limits of a bot created without any (`None` = unlimited).
    pub fn default_limits(&self) -> crate::runtime::Limits {
        let some = |v: u64| (v > 0).then_some(v);
        crate::runtime::Limits {
            memory_bytes: some(self.default_memory_bytes),
            cpu_millis: some(self.default_cpu_millis),
            pids: some(self.default_pids),
            disk_bytes: some(self.default_disk_bytes),
        }
    }

    /// The Unix socket the API is served on.
    pub fn unix_socket(&self) -> PathBuf {
        self.listen_unix.clone().unwrap_or_else(|| self.run_dir.join("berthd.sock"))
    }

    /// The database URL (SQLite in the state directory unless set).
    pub fn database(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.state_dir.join("berth.db").display()))
    }
}

/// `IP:PORT`, or `off`/empty for none.
fn optional_addr(setting: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match value {
        "off" | "" => Ok(None),
        a => a.parse().map(Some).map_err(|_| ConfigError(format!("{setting}: {a:?} is not an IP:PORT (or `off`)"))),
    }
}

/// Node names are DNS-label-like: they appear in logs, metrics labels and `berth node` commands.
fn check_node_name(n: &str) -> Result<(), String> {
    let ok = n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.']);
    if ok { Ok(()) } else { Err(format!("{n:?} must be 1-63 of a-z, 0-9, '-' and '.', not starting with - or .")) }
}

fn check_subnet(s: &str) -> Result<(), String> {
    let (ip, len) = s.split_once('/').ok_or("no /prefix length")?;
    let _: std::net::Ipv4Addr = ip.parse().map_err(|_| "not an IPv4 address")?;
    let len: u8 = len.parse().map_err(|_| "the prefix length is not a number")?;
    if !(8..=30).contains(&len) {
        return Err("the prefix length must be 8-30".into());
    }
    Ok(())
}
