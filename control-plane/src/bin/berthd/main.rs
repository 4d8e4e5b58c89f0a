//! `berthd`: the Berth control plane daemon. Loads its configuration (`config.rs`), connects to
//! containerd, opens the database, imports the configured image archives, settles what a crash left,
//! and serves the API on a Unix socket (and optionally TCP) and metrics over HTTP until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_control_plane::api::{Access, ApiTokens, router};
use berth_control_plane::bots::{BotManager, ManagerConfig};
use berth_control_plane::mcp::{McpConfig, McpHub};
use berth_control_plane::network::{Cni, NetworkConfig};
use berth_control_plane::runtime::containerd::Containerd;
use berth_control_plane::store::Store;
use clap::Parser;
use config::{Args, Config, LogFormat};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

mod config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Args::parse();
    if cli.print_default_config {
        print!("{}", config::default_config_text());
        return Ok(());
    }
    let args = Config::load(&cli)?;
    if cli.print_config {
        print!("{}", toml::to_string(&args).context("cannot print the configuration")?);
        return Ok(());
    }
    // Colours only on a terminal: log files and journald get plain text.
    use std::io::IsTerminal;
    let log = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().with_current_span(true).with_span_list(false).init(),
    }
    let tokens = match &args.api_token_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read API tokens from {}", p.display()))?
        }
        None => String::new(),
    };
    let tokens = ApiTokens::parse(&tokens).map_err(|e| anyhow::anyhow!("api_token_file: {e}"))?;
    if args.api_token_file.is_some() && tokens.is_empty() {
        anyhow::bail!("api_token_file: the file holds no token");
    }
    let metrics_addr = args.metrics_addr()?;
    // Checked before anything else starts, so a bad file is reported at once and by its flag.
    let registry_cas: Vec<Vec<u8>> = args
        .registry_cas
        .iter()
        .map(|p| {
            let pem = std::fs::read(p).with_context(|| format!("registry_cas: cannot read {}", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("registry_cas: {} is not PEM", p.display()))?;
            if certs.is_empty() {
                anyhow::bail!("registry_cas: {} holds no PEM certificate", p.display());
            }
            Ok(pem)
        })
        .collect::<anyhow::Result<_>>()?;
    for d in [&args.state_dir, &args.run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // One berthd per state directory: two would fight over the same bots. Held until the process exits.
    let _lock = lock_state_dir(&args.state_dir)?;
    let store = Store::open(&args.database()).await.with_context(|| "cannot open the database")?;
    if cli.migrate {
        tracing::info!("the database schema is current");
        return Ok(());
    }
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
        default_limits: args.default_limits(),
        dns_servers: args.dns_servers.clone(),
    };
    let network = Cni::new(NetworkConfig {
        cni_bin_dir: args.cni_bin_dir.clone(),
        netns_dir: args.run_dir.join("netns"),
        ipam_dir: args.state_dir.join("ipam"),
        bridge: args.bridge.clone(),
        subnet: args.subnet.clone(),
        masquerade: args.masquerade,
        egress_denied: args.egress_deny.clone(),
        attempts: args.cni_attempts,
        backoff: Duration::from_millis(200),
    });
    let manager = Arc::new(BotManager::new(runtime, network, store, config));
    let hub = Arc::new(McpHub::new(
        manager.clone(),
        McpConfig {
            idle_timeout: Duration::from_millis(args.mcp_idle_timeout_ms),
            http_idle_timeout: Duration::from_millis(args.mcp_http_idle_timeout_ms.min(args.mcp_idle_timeout_ms)),
            http_max_sessions_per_server: args.mcp_http_max_sessions_per_server,
            http_max_sessions_per_bot: args.mcp_http_max_sessions_per_bot,
        },
    ));
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
    let mut mcp_server = None;
    if let Some(addr) = args.mcp_addr()? {
        let l = TcpListener::bind(addr).await.with_context(|| format!("mcp_listen: cannot listen on {addr}"))?;
        let bound = l.local_addr().with_context(|| "MCP listener")?;
        let hosts = berth_control_plane::mcp::http::Hosts { local: bound, allowed: args.mcp_allowed_hosts.clone() };
        let front = berth_control_plane::mcp::http::Front::new(hub.clone(), tokens.clone(), hosts);
        mcp_server = Some(tokio::spawn(berth_control_plane::mcp::http::serve(l, front, stop_rx.clone())));
        tracing::info!(addr = %bound, "mcp listening");
    }
    // TCP first: the Unix socket appearing is the signal that berthd is fully up.
    if let Some(addr) = args.listen_tcp {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let tls = match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path, what: &str| {
                    std::fs::read(p).with_context(|| format!("{what}: cannot read {}", p.display()))
                };
                let identity =
                    tonic::transport::Identity::from_pem(read(cert, "tls_cert_file")?, read(key, "tls_key_file")?);
                Some(tonic::transport::ServerTlsConfig::new().identity(identity))
            }
            _ => None,
        };
        let secure = tls.is_some();
        let r = router(manager.clone(), hub.clone(), tokens.clone(), &health, tls, Access::Token)
            .await
            .context("tls_cert_file/tls_key_file: not a usable certificate and key")?;
        servers.push(tokio::spawn(r.serve_with_incoming_shutdown(TcpListenerStream::new(l), wait(stop_rx.clone()))));
        tracing::info!(%addr, tls = secure, "berthd listening");
    }
    let unix_path = args.unix_socket();
    let unix = listen_unix(&unix_path)?;
    let r = router(manager.clone(), hub.clone(), tokens.clone(), &health, None, Access::Socket)
        .await
        .context("cannot build the API router")?;
    // Each connection's request headers are fixed up so any gRPC client's Unix-socket `:authority` works.
    let incoming = tokio_stream::StreamExt::map(UnixListenerStream::new(unix), |c| {
        c.map(berth_control_plane::api::uds::UdsStream::new)
    });
    servers.push(tokio::spawn(r.serve_with_incoming_shutdown(incoming, wait(stop_rx.clone()))));
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
    for m in [metrics_server, mcp_server].into_iter().flatten() {
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
