//! `berthd`: the Berth control plane daemon. Connects to containerd, opens the database, imports the
//! configured image archives, and serves the API on a Unix socket (and optionally TCP) until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_control_plane::api::{ApiTokens, router};
use berth_control_plane::bots::{BotManager, ManagerConfig};
use berth_control_plane::network::{Cni, NetworkConfig};
use berth_control_plane::runtime::containerd::Containerd;
use berth_control_plane::store::Store;
use clap::Parser;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// berthd: runs one container per bot through containerd and serves Berth's API.
#[derive(Debug, Parser)]
#[command(name = "berthd", version)]
struct Args {
    /// containerd's socket.
    #[arg(long, env = "BERTH_CONTAINERD_SOCKET", default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd namespace holding Berth's bots and images.
    #[arg(long, env = "BERTH_NAMESPACE", default_value = "berth")]
    namespace: String,
    /// Durable state (the SQLite database by default, task logs).
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth")]
    state_dir: PathBuf,
    /// Runtime directory: one subdirectory per bot with its agent socket and token.
    #[arg(long, env = "BERTH_RUN_DIR", default_value = "/run/berth")]
    run_dir: PathBuf,
    /// Database URL: `sqlite://PATH?mode=rwc` or `postgres://…`; default: SQLite in the state directory.
    #[arg(long, env = "BERTH_DATABASE_URL")]
    database_url: Option<String>,
    /// Unix socket to serve the API on (default: <run-dir>/berthd.sock).
    #[arg(long, env = "BERTH_LISTEN_UNIX")]
    listen_unix: Option<PathBuf>,
    /// Also serve on this TCP address (an IP and port).
    #[arg(long, env = "BERTH_LISTEN_TCP")]
    listen_tcp: Option<SocketAddr>,
    /// OCI image archives to import at start (repeatable).
    #[arg(long = "image-archive", env = "BERTH_IMAGE_ARCHIVES", value_delimiter = ',')]
    image_archives: Vec<PathBuf>,
    /// Image used when a create names none.
    #[arg(long, env = "BERTH_DEFAULT_IMAGE", default_value = "berth/minimal:latest")]
    default_image: String,
    /// File with API tokens clients must present, one per line; none = no auth (Unix socket only).
    #[arg(long, env = "BERTH_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Default grace period of a stop, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    stop_timeout_ms: u64,
    /// How long a start waits for the agent to answer, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    agent_ready_timeout_ms: u64,
    /// The bots' bridge (at most 15 characters).
    #[arg(long, env = "BERTH_BRIDGE", default_value = "berth0")]
    bridge: String,
    /// The bots' subnet; the bridge takes its first address.
    #[arg(long, env = "BERTH_SUBNET", default_value = "10.213.0.0/16")]
    subnet: String,
    /// NAT the bots' outbound traffic (MASQUERADE), giving them access beyond the host.
    #[arg(long, env = "BERTH_MASQUERADE")]
    masquerade: bool,
    /// Where the CNI plugins are.
    #[arg(long, env = "BERTH_CNI_BIN_DIR", default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Registries (HOST[:PORT]) to pull from over plain HTTP instead of HTTPS (repeatable).
    #[arg(long = "insecure-registry", env = "BERTH_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// PEM files of CA certificates to trust for registries besides the public roots (repeatable).
    #[arg(long = "registry-ca", env = "BERTH_REGISTRY_CAS", value_delimiter = ',')]
    registry_cas: Vec<PathBuf>,
    /// Network setup attempts before a create fails.
    #[arg(long, default_value_t = 4)]
    cni_attempts: u32,
    /// How often the reconciler checks every bot (restarts dead tasks, repairs networks), in milliseconds;
    /// 0 turns it off.
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL_MS", default_value_t = 5_000)]
    reconcile_interval_ms: u64,
    /// Serve Prometheus metrics (`/metrics`) and health (`/healthz`, `/readyz`) over HTTP on this address;
    /// `off` turns it off. Port 0 picks a free port (logged).
    #[arg(long, env = "BERTH_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Largest expanded size of an imported data archive, in bytes (guards against decompression bombs).
    #[arg(long, env = "BERTH_IMPORT_MAX_BYTES", default_value_t = 64 << 30)]
    import_max_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Colours only on a terminal: log files and journald get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
    let args = Args::parse();
    let tokens = match &args.api_token_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read API tokens from {}", p.display()))?
        }
        None => String::new(),
    };
    let tokens = ApiTokens::new(tokens.lines().map(String::from).collect());
    let metrics_addr: Option<SocketAddr> = match args.metrics_listen.as_str() {
        "off" | "" => None,
        a => Some(a.parse().with_context(|| format!("--metrics-listen {a:?} is not an IP:PORT (or `off`)"))?),
    };
    if args.listen_tcp.is_some() && args.api_token_file.is_none() {
        anyhow::bail!("--listen-tcp needs --api-token-file: TCP is never served without authentication");
    }
    // Checked before anything else starts, so a bad file is reported at once and by its flag.
    let registry_cas: Vec<Vec<u8>> = args
        .registry_cas
        .iter()
        .map(|p| {
            let pem = std::fs::read(p).with_context(|| format!("cannot read --registry-ca {}", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--registry-ca {} is not PEM", p.display()))?;
            if certs.is_empty() {
                anyhow::bail!("--registry-ca {} holds no PEM certificate", p.display());
            }
            Ok(pem)
        })
        .collect::<anyhow::Result<_>>()?;
    for d in [&args.state_dir, &args.run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // One berthd per state directory: two would fight over the same bots. Held until the process exits.
    let _lock = lock_state_dir(&args.state_dir)?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", args.state_dir.join("berth.db").display()));
    let store = Store::open(&url).await.with_context(|| "cannot open the database")?;
    let runtime = Containerd::connect(&args.containerd_socket, &args.namespace, &args.state_dir.join("logs"))
        .await
        .with_context(|| format!("cannot reach containerd at {}", args.containerd_socket.display()))?;
    let config = ManagerConfig {
        run_dir: args.run_dir.clone(),
        default_image: args.default_image.clone(),
        stop_timeout: Duration::from_millis(args.stop_timeout_ms),
        agent_ready_timeout: Duration::from_millis(args.agent_ready_timeout_ms),
        insecure_registries: args.insecure_registries.clone(),
        registry_cas,
        state_dir: args.state_dir.clone(),
        import_max_bytes: args.import_max_bytes,
    };
    if args.bridge.is_empty() || args.bridge.len() > 15 {
        anyhow::bail!("--bridge {:?} must be 1-15 characters (a Linux interface name)", args.bridge);
    }
    let network = Cni::new(NetworkConfig {
        cni_bin_dir: args.cni_bin_dir.clone(),
        netns_dir: args.run_dir.join("netns"),
        ipam_dir: args.state_dir.join("ipam"),
        bridge: args.bridge.clone(),
        subnet: args.subnet.clone(),
        masquerade: args.masquerade,
        attempts: args.cni_attempts,
        backoff: Duration::from_millis(200),
    });
    let manager = Arc::new(BotManager::new(runtime, network, store, config));
    for a in &args.image_archives {
        manager.import_image(a).await.with_context(|| format!("cannot import {}", a.display()))?;
    }
    let settled = manager.settle_operations().await.context("cannot settle interrupted operations")?;
    if settled > 0 {
        tracing::warn!(operations = settled, "settled operations interrupted by a restart");
    }
    // Never a reason not to start: what could not be recovered is logged and left as it is.
    match manager.recover_orphans().await {
        Ok(orphans) if orphans != Default::default() => tracing::warn!(?orphans, "recovered orphaned bot data"),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %berth_control_plane::error::chain(&e), "could not look for orphaned bot data")
        }
    }
    for change in manager.ensure_network_rules().await.context("cannot set up the bots' firewall rules")? {
        tracing::info!(%change, "firewall");
    }
    let fixed = manager.recover().await.context("cannot check bots against containerd")?;
    if fixed > 0 {
        tracing::info!(bots = fixed, "corrected bot states at start-up");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut servers = Vec::new();
    let reconciler = (args.reconcile_interval_ms > 0)
        .then(|| manager.spawn_reconciler(Duration::from_millis(args.reconcile_interval_ms), stop_rx.clone()));
    let health = berth_control_plane::api::health::track(manager.clone(), stop_rx.clone());
    let mut metrics_server = None;
    if let Some(addr) = metrics_addr {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let bound = l.local_addr().with_context(|| "metrics listener")?;
        metrics_server = Some(tokio::spawn(berth_control_plane::api::http::serve(l, manager.clone(), stop_rx.clone())));
        tracing::info!(addr = %bound, "metrics listening");
    }
    // TCP first: the Unix socket appearing is the signal that berthd is fully up.
    if let Some(addr) = args.listen_tcp {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let r = router(manager.clone(), tokens.clone(), &health).await;
        servers.push(tokio::spawn(r.serve_with_incoming_shutdown(TcpListenerStream::new(l), wait(stop_rx.clone()))));
        tracing::info!(%addr, "berthd listening");
    }
    let unix_path = args.listen_unix.clone().unwrap_or_else(|| args.run_dir.join("berthd.sock"));
    let unix = listen_unix(&unix_path)?;
    let r = router(manager.clone(), tokens.clone(), &health).await;
    servers.push(tokio::spawn(r.serve_with_incoming_shutdown(UnixListenerStream::new(unix), wait(stop_rx.clone()))));
    tracing::info!(socket = %unix_path.display(), "berthd listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("berthd shutting down; bots keep running");
    let _ = stop_tx.send(true);
    for s in servers {
        // Open client streams would hold a graceful shutdown forever; bots are unaffected either way.
        let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
    }
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    if let Some(r) = reconciler {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    let _ = std::fs::remove_file(&unix_path);
    Ok(())
}

/// Listens on `path` so that the socket appears only when it accepts connections, already 0600: bound and
/// chmod-ed under a temporary name, then renamed into place. A live berthd already on `path` is an error;
/// a stale socket (a crash) is replaced.
fn listen_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("another berthd is already listening on {}", path.display());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let unix = UnixListener::bind(&tmp).with_context(|| format!("cannot listen on {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move the socket into place at {}", path.display()))?;
    Ok(unix)
}

/// Takes an exclusive lock on `<state-dir>/berthd.lock` (released by the kernel when berthd exits, however
/// it exits), so a second berthd on the same state refuses to start instead of racing the first.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("berthd.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("another berthd is already running on the state directory {}", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}
