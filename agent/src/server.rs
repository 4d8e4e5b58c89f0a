//! Serving: listeners (Unix socket, optional TCP), the gRPC server with auth, health and size limits, and
//! graceful shutdown that ends every session before the agent exits.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::agent::v1::container_service_server::ContainerServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::Service;
use crate::auth::Token;
use crate::config::Config;
use crate::fs::root::Root;
use crate::process::detached::Detached;
use crate::process::reaper::{self, ReaperStats};
use crate::process::registry::Registry;
use crate::state::{Agent, MAX_MESSAGE_BYTES};
// HTTP/2 windows: see `berth_proto::wire` on h2's small-frame budget.
use berth_proto::wire::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};

/// How long sessions get to exit after SIGTERM when the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long open streams get to finish after the sessions ended.
const SERVER_DRAIN: Duration = Duration::from_secs(1);

/// Why the agent could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Runs the agent until `shutdown` completes, then ends all sessions and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    if config.socket.is_none() && config.listen_tcp.is_none() {
        return Err(ServeError::Config("give --socket, --listen-tcp or both".into()));
    }
    let token = Token::from_file(&config.token_file).map_err(ServeError::Config)?;
    let root = Root::new(&config.root, &config.data_dir)
        .map_err(|e| ServeError::Config(format!("cannot open root `{}`: {e}", config.root.display())))?;
    join_user_cgroup(&config).await?;
    sweep_interrupted_uploads(&root);
    let registry = Arc::new(Registry::default());
    let reaped = Arc::new(ReaperStats::default());
    reaper::start(registry.clone(), reaped.clone())
        .map_err(|e| ServeError::Config(format!("cannot watch SIGCHLD: {e}")))?;
    let state_dir = config.state_dir.clone().unwrap_or_else(|| config.root.join("var/lib/berth-agent/processes"));
    let detached = Detached::load(&state_dir, registry.clone(), config.max_journal_bytes_total).unwrap_or_else(|e| {
        let why = format!("the agent cannot use its state directory `{}`: {e}", state_dir.display());
        tracing::warn!(error = %why, "detached processes are unavailable");
        Detached::unavailable(&state_dir, registry.clone(), why)
    });
    let agent = Arc::new(Agent {
        root: Arc::new(root),
        registry: registry.clone(),
        detached: Arc::new(detached),
        reaper: reaped,
        started: Instant::now(),
        max_mcp_message_bytes: config.max_mcp_message_bytes,
    });
    let service = Service::new(agent);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    if let Some(path) = &config.socket {
        let listener = bind_unix(path)?;
        tracing::info!(socket = %path.display(), "listening");
        let router = router(&service, &token).await;
        let stop = wait_stop(stop_rx.clone());
        servers.push(tokio::spawn(router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)));
    }
    if let Some(addr) = config.listen_tcp {
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { what: addr.to_string(), source })?;
        tracing::info!(addr = %addr, "listening");
        let router = router(&service, &token).await;
        let stop = wait_stop(stop_rx.clone());
        servers.push(tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)));
    }
    shutdown.await;
    tracing::info!("shutting down: ending sessions");
    end_sessions(&registry).await;
    let _ = stop_tx.send(true);
    drain(servers).await?;
    if let Some(path) = &config.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Puts the processes the agent starts into the bot's user cgroup: opened from a directory, or handed
/// over by berthd on a socket (see `process::cgroup`).
async fn join_user_cgroup(config: &Config) -> Result<(), ServeError> {
    if let Some(dir) = &config.user_cgroup {
        let n = crate::process::cgroup::init(dir).map_err(|e| {
            ServeError::Config(format!("cannot open the user cgroup's files in `{}`: {e}", dir.display()))
        })?;
        tracing::info!(dir = %dir.display(), hierarchies = n, "children run in the user cgroup");
    }
    if let Some(socket) = config.user_cgroup_from.clone() {
        let wait = Duration::from_secs(config.user_cgroup_wait_secs);
        let n = tokio::task::spawn_blocking(move || crate::process::cgroup::receive(&socket, wait))
            .await
            .map_err(|e| ServeError::Config(format!("the user cgroup handoff failed: {e}")))?
            .map_err(|e| ServeError::Config(format!("no user cgroup: {e}")))?;
        tracing::info!(hierarchies = n, "children run in the user cgroup (handed over)");
    }
    Ok(())
}

/// Removes, in the background, the temporary files of uploads a previous run was killed in the middle of.
fn sweep_interrupted_uploads(root: &Root) {
    let data = root.host_path(root.data_dir());
    let started = std::time::SystemTime::now();
    tokio::task::spawn_blocking(move || {
        let done = crate::fs::sweep::sweep(&data, started);
        if done.removed > 0 {
            tracing::info!(dir = %data.display(), removed = done.removed, "removed temporary files of interrupted uploads");
        }
    });
}

/// Waits for the servers to end. Graceful shutdown waits for open streams, which clients may hold
/// forever (a watch, an idle exec request side); after SERVER_DRAIN the process exits anyway and the
/// kernel closes the connections.
async fn drain(servers: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>) -> Result<(), ServeError> {
    let deadline = tokio::time::Instant::now() + SERVER_DRAIN;
    for mut s in servers {
        match tokio::time::timeout_at(deadline, &mut s).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(ServeError::Transport(e)),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => {
                tracing::info!("clients still connected after the drain period; closing");
                s.abort();
            }
        }
    }
    Ok(())
}

async fn router(service: &Service, token: &Token) -> tonic::transport::server::Router {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ContainerServiceServer<Service>>().await;
    let auth = {
        let token = token.clone();
        move |req| token.check(req)
    };
    let svc = ContainerServiceServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        // Bounded per-stream buffering of client frames (stdin, MCP messages) that a stuck child does not
        // read, so h2's small-frame budget (half the connection window) is never exhausted.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .add_service(InterceptedService::new(health_service, auth.clone()))
        .add_service(InterceptedService::new(svc, auth))
}

fn bind_unix(path: &std::path::Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let listen_err = |source| ServeError::Listen { what: path.display().to_string(), source };
    // A socket left by a previous run would make bind fail, and so would a link put in its place (a bot
    // can write the socket directory); anything else at the path is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && (meta.file_type().is_socket() || meta.file_type().is_symlink())
    {
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// SIGTERM every session's group, give them [`SHUTDOWN_GRACE`], then SIGKILL what is left.
async fn end_sessions(registry: &Registry) {
    if registry.list().is_empty() {
        return;
    }
    registry.signal_all(libc::SIGTERM);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while !registry.list().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.signal_all(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(1);
    while !registry.list().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
