//! berthd as a library: [`Daemon::start`] takes the effective settings ([`Config`]), opens the database,
//! containerd and the network, settles what a crash left, starts the reconciler and every listener, and
//! returns once the API socket accepts connections; [`Daemon::stop`] shuts it all down (bots keep
//! running). The binary only reads its configuration, sets up logging and waits for a signal; a test can
//! run several daemons in one process, each with its own state.

mod cluster_watch;
mod config;
mod listen;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

pub use config::{Config, ConfigError, LogFormat};

use crate::api::{Access, ApiTokens, router};
use crate::bots::Platform;
use crate::bots::{BotManager, ManagerConfig};
use crate::cluster::{self, Cluster, NodeSpec};
use crate::mcp::{McpConfig, McpHub};
use crate::network::{Cni, NetworkConfig};
use crate::runtime::containerd::Containerd;
use crate::store::Store;

/// Why the daemon could not start: what it was doing, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct DaemonError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DaemonError {
    fn new(what: impl Into<String>) -> DaemonError {
        DaemonError { what: what.into(), source: None }
    }
}

/// Adds what was being done to an error.
trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, DaemonError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, DaemonError> {
        self.map_err(|e| DaemonError { what: what(), source: Some(Box::new(e)) })
    }
}

/// A running berthd.
pub struct Daemon {
    stop: tokio::sync::watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    side: Vec<JoinHandle<()>>,
    reconciler: Option<JoinHandle<()>>,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    mcp: Option<SocketAddr>,
    /// Flushed at stop, so events announced last are stored (or spilled), not lost with the process.
    events: crate::events::Journal,
    /// The state directory's lock, held while the daemon runs.
    _lock: std::fs::File,
}

impl Daemon {
    /// Starts a daemon; it serves until [`Daemon::stop`].
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        config.validate().doing(|| "invalid configuration".into())?;
        let tokens = read_tokens(&config)?;
        let registry_cas = read_registry_cas(&config)?;
        let metrics_addr = config.metrics_addr().doing(|| "metrics_listen".into())?;
        let mcp_addr = config.mcp_addr().doing(|| "mcp_listen".into())?;
        let lock = prepare_dirs(&config)?;
        let store = Store::open(&config.database()).await.doing(|| "cannot open the database".into())?;
        let runtime = Containerd::connect(&config.containerd_socket, &config.namespace, &config.state_dir.join("logs"))
            .await
            .doing(|| format!("cannot reach containerd at {}", config.containerd_socket.display()))?;
        // Bound before joining a cluster, which advertises the address (its port, when listen_tcp asks for
        // any); served last.
        let tcp_listener = match config.listen_tcp {
            Some(addr) => Some(TcpListener::bind(addr).await.doing(|| format!("cannot listen on {addr}"))?),
            None => None,
        };
        let tcp_bound =
            tcp_listener.as_ref().map(TcpListener::local_addr).transpose().doing(|| "TCP listener".into())?;
        // In a cluster, join before anything acts on bots: recovery and the reconciler then see this
        // node's own (those a single-node berthd made here become its own).
        let cluster = join_cluster(&config, &store, tcp_bound).await?;
        let node = cluster.as_ref().map(|c| c.name().to_string());
        let subnet = match (&cluster, config.cluster_subnet.as_str()) {
            (Some(c), range) if !range.is_empty() => {
                cluster::subnets::claim(&store, c.name(), range, config.node_subnet_prefix)
                    .await
                    .doing(|| "cluster_subnet: cannot take this node's subnet".into())?
            }
            _ => config.subnet.clone(),
        };
        tracing::info!(subnet = %subnet, bridge = %config.bridge, "bot network");
        let manager = Arc::new(BotManager::<Host>::new(
            runtime,
            network(&config, subnet),
            crate::agent_client::GrpcAgents,
            store.clone(),
            manager_config(&config, registry_cas, node),
        ));
        let hub = Arc::new(McpHub::new(manager.clone(), store, mcp_config(&config), cluster.clone()));
        for a in &config.image_archives {
            manager.import_image(a).await.doing(|| format!("cannot import {}", a.display()))?;
        }
        recover(&manager).await?;

        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let reconciler = (config.reconcile_interval_ms > 0)
            .then(|| manager.spawn_reconciler(Duration::from_millis(config.reconcile_interval_ms), stop_rx.clone()));
        let health = crate::api::health::track(manager.clone(), stop_rx.clone());
        let mut side = vec![manager.spawn_log_guard(stop_rx.clone())];
        if let Some(c) = &cluster {
            side.extend(cluster_watch::spawn(c, manager.clone(), health.clone(), stop_rx.clone()));
        }
        let mut metrics = None;
        if let Some(addr) = metrics_addr {
            let l = TcpListener::bind(addr).await.doing(|| format!("cannot listen on {addr} for metrics"))?;
            let bound = l.local_addr().doing(|| "metrics listener".into())?;
            side.push(tokio::spawn(crate::api::http::serve(l, manager.clone(), stop_rx.clone())));
            tracing::info!(addr = %bound, "metrics listening");
            metrics = Some(bound);
        }
        let mut mcp = None;
        if let Some(addr) = mcp_addr {
            let l = TcpListener::bind(addr).await.doing(|| format!("mcp_listen: cannot listen on {addr}"))?;
            let bound = l.local_addr().doing(|| "MCP listener".into())?;
            let hosts = crate::mcp::http::Hosts { local: bound, allowed: config.mcp_allowed_hosts.clone() };
            let front = crate::mcp::http::Front::new(hub.clone(), tokens.clone(), hosts);
            side.push(tokio::spawn(crate::mcp::http::serve(l, front, stop_rx.clone())));
            tracing::info!(addr = %bound, "mcp listening");
            mcp = Some(bound);
        }
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let mut servers = Vec::new();
        // TCP first: the Unix socket appearing is the signal that berthd is fully up.
        let mut tcp = None;
        if let (Some(l), Some(bound)) = (tcp_listener, tcp_bound) {
            let tls = tls_config(&config)?;
            let secure = tls.is_some();
            let r = router(manager.clone(), hub.clone(), cluster.clone(), tokens.clone(), &health, tls, Access::Token)
                .await
                .doing(|| "tls_cert_file/tls_key_file: not a usable certificate and key".into())?;
            servers.push(tokio::spawn(r.serve_with_incoming_shutdown(no_delay(l), wait(stop_rx.clone()))));
            tracing::info!(addr = %bound, tls = secure, "berthd listening");
            tcp = Some(bound);
        }
        let socket = config.unix_socket();
        let unix = listen::unix(&socket)?;
        let r = router(manager.clone(), hub.clone(), cluster.clone(), tokens.clone(), &health, None, Access::Socket)
            .await
            .doing(|| "cannot build the API router".into())?;
        // Each connection's request headers are fixed up so any gRPC client's Unix-socket `:authority` works.
        let incoming =
            tokio_stream::StreamExt::map(UnixListenerStream::new(unix), |c| c.map(crate::api::uds::UdsStream::new));
        servers.push(tokio::spawn(r.serve_with_incoming_shutdown(incoming, wait(stop_rx.clone()))));
        tracing::info!(socket = %socket.display(), "berthd listening");
        let events = manager.events().clone();
        Ok(Daemon { stop, servers, side, reconciler, socket, tcp, metrics, mcp, events, _lock: lock })
    }

    /// The API's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where the API listens on TCP, the metrics and the MCP front-end, as bound (a `:0` port resolved).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    pub fn mcp_addr(&self) -> Option<SocketAddr> {
        self.mcp
    }

    /// Stops serving and the reconciler; bots keep running. Bounded: open client streams cannot hold it.
    pub async fn stop(self) {
        tracing::info!("berthd shutting down; bots keep running");
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
        for s in self.side {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
        if let Some(r) = self.reconciler {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        if !self.events.flush(Duration::from_secs(5)).await {
            tracing::warn!("events announced last may not be stored: the event writer did not finish in 5 s");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The TCP listener's connections with Nagle's algorithm off: a stream's small messages (an exec's
/// output, a forwarded call's answers) go out at once instead of waiting for the peer's delayed ACK.
fn no_delay(l: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(l), |c| {
        if let Ok(c) = &c
            && let Err(e) = c.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot turn Nagle's algorithm off on a connection");
        }
        c
    })
}

/// In cluster mode, joins the cluster as this node (its name, address and capacity from the settings,
/// the host's where unset); `None` otherwise.
async fn join_cluster(
    config: &Config,
    store: &Store,
    bound: Option<SocketAddr>,
) -> Result<Option<Arc<Cluster>>, DaemonError> {
    if !config.cluster {
        return Ok(None);
    }
    let or = |v: u64, host: fn() -> u64| if v > 0 { v } else { host() };
    let me = NodeSpec {
        name: if config.node_name.is_empty() { cluster::host_name() } else { config.node_name.clone() },
        address: match (config.advertise_addr.is_empty(), bound) {
            (true, Some(bound)) => bound.to_string(),
            _ => config.advertise_addr().doing(|| "advertise_addr".into())?,
        },
        memory_bytes: or(config.node_memory_bytes, cluster::host_memory_bytes),
        cpu_millis: or(config.node_cpu_millis, cluster::host_cpu_millis),
        max_bots: config.node_max_bots,
        labels: config.node_labels().doing(|| "node_labels".into())?,
    };
    let lost_after = Duration::from_millis(config.node_lost_after_ms);
    let token_file = config.cluster_token_file.as_deref().unwrap_or(Path::new(""));
    let credential =
        cluster::Credential::from_file(token_file).map_err(|e| DaemonError::new(format!("cluster_token_file: {e}")))?;
    let ca = match &config.cluster_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| DaemonError::new(format!("cluster_ca_file: cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let access = cluster::PeerAccess { credential, ca };
    let c = Cluster::join(store.clone(), me, lost_after, access).await.doing(|| "cannot join the cluster".into())?;
    Ok(Some(c))
}

/// Brings the database to the current schema and returns (`berthd --migrate`).
pub async fn migrate(config: &Config) -> Result<(), DaemonError> {
    let _lock = prepare_dirs(config)?;
    Store::open(&config.database()).await.doing(|| "cannot open the database".into())?;
    Ok(())
}

/// Creates the state and run directories and locks the state directory (one berthd per state).
fn prepare_dirs(config: &Config) -> Result<std::fs::File, DaemonError> {
    for d in [&config.state_dir, &config.run_dir] {
        std::fs::create_dir_all(d).doing(|| format!("cannot create {}", d.display()))?;
    }
    listen::lock_state_dir(&config.state_dir)
}

fn read_tokens(config: &Config) -> Result<ApiTokens, DaemonError> {
    let Some(p) = &config.api_token_file else { return Ok(ApiTokens::default()) };
    let text = std::fs::read_to_string(p).doing(|| format!("cannot read API tokens from {}", p.display()))?;
    let tokens = ApiTokens::parse(&text).map_err(|e| DaemonError::new(format!("api_token_file: {e}")))?;
    if tokens.is_empty() {
        return Err(DaemonError::new("api_token_file: the file holds no token"));
    }
    Ok(tokens)
}

/// Checked before anything starts, so a bad file is reported at once and by its setting.
fn read_registry_cas(config: &Config) -> Result<Vec<Vec<u8>>, DaemonError> {
    config
        .registry_cas
        .iter()
        .map(|p| {
            let pem = std::fs::read(p).doing(|| format!("registry_cas: cannot read {}", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .doing(|| format!("registry_cas: {} is not PEM", p.display()))?;
            if certs.is_empty() {
                return Err(DaemonError::new(format!("registry_cas: {} holds no PEM certificate", p.display())));
            }
            Ok(pem)
        })
        .collect()
}

fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, DaemonError> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else { return Ok(None) };
    let read = |p: &Path, what: &str| std::fs::read(p).doing(|| format!("{what}: cannot read {}", p.display()));
    let identity = tonic::transport::Identity::from_pem(read(cert, "tls_cert_file")?, read(key, "tls_key_file")?);
    Ok(Some(tonic::transport::ServerTlsConfig::new().identity(identity)))
}

fn manager_config(config: &Config, registry_cas: Vec<Vec<u8>>, node: Option<String>) -> ManagerConfig {
    ManagerConfig {
        run_dir: config.run_dir.clone(),
        default_image: config.default_image.clone(),
        stop_timeout: Duration::from_millis(config.stop_timeout_ms),
        agent_ready_timeout: Duration::from_millis(config.agent_ready_timeout_ms),
        insecure_registries: config.insecure_registries.clone(),
        registry_cas,
        state_dir: config.state_dir.clone(),
        import_max_bytes: config.import_max_bytes,
        default_limits: config.default_limits(),
        dns_servers: config.dns_servers.clone(),
        node,
        events_keep: Duration::from_secs(config.event_retention_hours * 3600),
    }
}

fn network(config: &Config, subnet: String) -> Cni {
    Cni::new(NetworkConfig {
        cni_bin_dir: config.cni_bin_dir.clone(),
        netns_dir: config.run_dir.join("netns"),
        ipam_dir: config.state_dir.join("ipam"),
        bridge: config.bridge.clone(),
        subnet,
        masquerade: config.masquerade,
        egress_denied: config.egress_deny.clone(),
        attempts: config.cni_attempts,
        backoff: Duration::from_millis(200),
    })
}

fn mcp_config(config: &Config) -> McpConfig {
    McpConfig {
        idle_timeout: Duration::from_millis(config.mcp_idle_timeout_ms),
        http_idle_timeout: Duration::from_millis(config.mcp_http_idle_timeout_ms.min(config.mcp_idle_timeout_ms)),
        http_max_sessions_per_server: config.mcp_http_max_sessions_per_server,
        http_max_sessions_per_bot: config.mcp_http_max_sessions_per_bot,
    }
}

/// What a crash or restart left: interrupted operations settled, orphaned data recovered, the firewall
/// and every bot's state checked against containerd. Orphans never stop a start: what cannot be
/// recovered is logged and left.
async fn recover(manager: &BotManager<Host>) -> Result<(), DaemonError> {
    let settled = manager.settle_operations().await.doing(|| "cannot settle interrupted operations".into())?;
    if settled > 0 {
        tracing::warn!(operations = settled, "settled operations interrupted by a restart");
    }
    match manager.recover_orphans().await {
        Ok(orphans) if orphans != Default::default() => tracing::warn!(?orphans, "recovered orphaned bot data"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %crate::error::chain(&e), "could not look for orphaned bot data"),
    }
    for change in manager.ensure_network_rules().await.doing(|| "cannot set up the bots' firewall rules".into())? {
        tracing::info!(%change, "firewall");
    }
    let fixed = manager.recover().await.doing(|| "cannot check bots against containerd".into())?;
    if fixed > 0 {
        tracing::info!(bots = fixed, "corrected bot states at start-up");
    }
    Ok(())
}

/// What berthd runs bots on: containerd and CNI.
pub struct Host;

impl Platform for Host {
    type Runtime = Containerd;
    type Network = Cni;
    type Agents = crate::agent_client::GrpcAgents;
}
