//! Connecting to a `berth-agent`: a tonic channel over the agent's Unix socket (or TCP), with the
//! container's bearer token on every call and message limits raised to match the agent's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::agent::v1::container_service_client::ContainerServiceClient;
use hyper_util::rt::TokioIo;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod bot;
pub mod fake;

pub use berth_proto::wire::{CONNECTION_WINDOW_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES};
pub use bot::{Agents, BotAgent, GrpcAgent, GrpcAgents, McpChannel};
/// How long connecting may take before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected agent client.
pub type AgentClient = ContainerServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the agent token from `{path}`")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent token in `{path}` is empty or not printable ASCII")]
    BadToken { path: PathBuf },
    #[error("cannot connect to `{target}`")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` (when there is a token) and, for calls through berthd, the
/// `berth-bot` routing header to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<AsciiMetadataValue>,
    bot: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl BearerAuth {
    /// Builds the header from a token (surrounding whitespace ignored).
    pub fn new(token: &str) -> Option<BearerAuth> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let mut header: AsciiMetadataValue = format!("Bearer {token}").parse().ok()?;
        header.set_sensitive(true);
        Some(BearerAuth { header: Some(header), bot: None })
    }

    /// No token (berthd without API tokens, on its private Unix socket).
    pub fn none() -> BearerAuth {
        BearerAuth { header: None, bot: None }
    }

    /// Routes agent-protocol calls through berthd to bot `name`.
    pub fn with_bot(mut self, name: &str) -> Option<BearerAuth> {
        self.bot = Some(name.parse().ok()?);
        Some(self)
    }

    /// Reads the token from a file.
    pub fn from_file(path: &Path) -> Result<BearerAuth, ConnectError> {
        let raw =
            std::fs::read_to_string(path).map_err(|source| ConnectError::Token { path: path.to_path_buf(), source })?;
        BearerAuth::new(&raw).ok_or_else(|| ConnectError::BadToken { path: path.to_path_buf() })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(b) = &self.bot {
            req.metadata_mut().insert(berth_proto::wire::BOT_HEADER, b.clone());
        }
        Ok(req)
    }
}

/// HTTP/2 PING interval on every connection, idle or not, and how long an answer may take: a peer that
/// froze (SIGSTOP, a hung host) is reported within their sum, even in the middle of a quiet stream.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts, keepalive and windows shared by every connection (Unix socket or TCP).
fn configure(e: Endpoint) -> Endpoint {
    e.connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

fn client(channel: Channel, auth: BearerAuth) -> AgentClient {
    ContainerServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A channel to a Unix socket (`/path` or `unix:/path`) or a TCP address (`http://IP:PORT`).
pub async fn channel(addr: &str) -> Result<Channel, ConnectError> {
    channel_with_ca(addr, None).await
}

/// Like [`channel`], and `https://IP:PORT` over TLS, trusting the PEM certificates `ca` (besides the
/// system's roots: none here, so `ca` is required for https).
pub async fn channel_with_ca(addr: &str, ca: Option<&[u8]>) -> Result<Channel, ConnectError> {
    if addr.starts_with("https://") {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|source| ConnectError::Connect { target: addr.to_string(), source })?;
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(pem) = ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        let endpoint =
            endpoint.tls_config(tls).map_err(|source| ConnectError::Connect { target: addr.to_string(), source })?;
        return configure(endpoint)
            .connect()
            .await
            .map_err(|source| ConnectError::Connect { target: addr.to_string(), source });
    }
    match addr.strip_prefix("http://") {
        Some(a) => tcp_channel(format!("http://{a}")).await,
        None => unix_channel(Path::new(addr.strip_prefix("unix:").unwrap_or(addr))).await,
    }
}

/// A channel to `url` (`http://HOST:PORT`, or `https://` trusting the PEM certificates `ca`) that connects
/// at its first call and again after a failure, each attempt bounded by `connect_timeout`: berthd's
/// channels to its peers in a cluster.
pub fn lazy_channel(url: &str, ca: Option<&[u8]>, connect_timeout: Duration) -> Result<Channel, ConnectError> {
    let fail = |source| ConnectError::Connect { target: url.to_string(), source };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(fail)?;
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(pem) = ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(fail)?;
    }
    Ok(configure(endpoint).connect_timeout(connect_timeout).connect_lazy())
}

async fn unix_channel(socket: &Path) -> Result<Channel, ConnectError> {
    let path = socket.to_path_buf();
    // The URI is ignored by the connector; it only has to parse.
    configure(Endpoint::from_static("http://agent.invalid"))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| ConnectError::Connect { target: socket.display().to_string(), source })
}

async fn tcp_channel(target: String) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_shared(target.clone())
        .map_err(|source| ConnectError::Connect { target: target.clone(), source })?;
    configure(endpoint).connect().await.map_err(|source| ConnectError::Connect { target, source })
}

/// An agent-protocol client on an existing channel.
pub fn agent_on(channel: Channel, auth: BearerAuth) -> AgentClient {
    client(channel, auth)
}

/// Connects over the agent's Unix socket.
pub async fn connect_unix(socket: &Path, auth: BearerAuth) -> Result<AgentClient, ConnectError> {
    Ok(client(unix_channel(socket).await?, auth))
}

/// Connects over a Unix socket that `open` finds each time a connection is made (an `O_PATH` descriptor
/// of the socket, opened without following links: see `bots::agent_dir`); the connection goes through
/// `/proc/self/fd/N`, so nothing at the path can redirect it. `target` names it in errors.
pub async fn connect_unix_opened<F>(open: F, target: String, auth: BearerAuth) -> Result<AgentClient, ConnectError>
where
    F: Fn() -> std::io::Result<std::os::fd::OwnedFd> + Clone + Send + Sync + 'static,
{
    let channel = configure(Endpoint::from_static("http://agent.invalid"))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let open = open.clone();
            async move {
                let fd = open()?;
                let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                let stream = tokio::net::UnixStream::connect(via).await?;
                drop(fd);
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| ConnectError::Connect { target, source })?;
    Ok(client(channel, auth))
}

/// Connects over TCP to `addr` (an IP and port).
pub async fn connect_tcp(addr: std::net::SocketAddr, auth: BearerAuth) -> Result<AgentClient, ConnectError> {
    Ok(client(tcp_channel(format!("http://{addr}")).await?, auth))
}

/// An agent's status as berthd's error: the one mapping of the agent protocol's statuses (the agent's
/// message is already meant for people).
pub fn to_error(s: tonic::Status) -> crate::error::Error {
    use crate::error::Error;
    use tonic::Code;
    let m = format!("the bot's agent: {}", s.message());
    match s.code() {
        Code::NotFound => Error::NotFound(m),
        Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
        Code::FailedPrecondition | Code::PermissionDenied => Error::FailedPrecondition(m),
        Code::ResourceExhausted => Error::ResourceExhausted(m),
        _ => Error::Unavailable(m),
    }
}
