//! berthd's gRPC surface: `BotService` (lifecycle), `DataService`, `ImageService`, `McpService` and the agent protocol proxied to a bot's agent
//! (`proxy.rs`). Handlers are thin; [`Error`] becomes a [`tonic::Status`] only here. Every call is
//! checked against the API tokens when any are configured.

mod bots;
mod convert;
mod data;
pub mod forward;
pub mod health;
pub mod http;
mod huffman;
mod images;
mod mcp;
mod nodes;
mod proxy;
pub mod scope;
mod streams;
pub mod uds;

use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::v1::container_service_server::ContainerServiceServer;
use berth_proto::controlplane::v1::bot_service_server::BotServiceServer;
use berth_proto::controlplane::v1::data_service_server::DataServiceServer;
use berth_proto::controlplane::v1::image_service_server::ImageServiceServer;
use berth_proto::controlplane::v1::mcp_service_server::McpServiceServer;
use berth_proto::controlplane::v1::node_service_server::NodeServiceServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Status};

pub use crate::auth::{ApiTokens, Scope};
use crate::bots::BotManager;
use crate::error::Error;

use crate::bots::Platform;
pub use berth_proto::wire::{BOT_HEADER, MAX_MESSAGE_BYTES};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            e @ Error::Internal { .. } => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(error.id = %id, error = %crate::error::chain(&e), "internal error");
                Status::internal(format!("{e} (internal error {id}; see the berthd log)"))
            }
        }
    }
}

/// Who may call: the API tokens, and in a cluster the peers' shared secret.
#[derive(Clone)]
struct Gate {
    tokens: ApiTokens,
    peers: Option<crate::cluster::Credential>,
    /// Whether a request without a token is admitted with every right (the Unix socket, guarded by its
    /// file permissions).
    optional: bool,
}

impl Gate {
    /// Admits a request, putting the caller's [`Scope`] in its extensions. A peer presenting the
    /// cluster's secret acts with the scope it forwards (see `forward.rs`), which must be there; a token,
    /// when sent, is checked and limits the caller to its scope, even where one is optional.
    fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req.metadata().get("authorization").map(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if let (Some(peers), Some(Some(p))) = (&self.peers, presented)
            && peers.matches(p)
        {
            let scope = forward::forwarded_scope(&req)?;
            req.extensions_mut().insert(scope);
            req.extensions_mut().insert(forward::Forwarded);
            return Ok(req);
        }
        if self.tokens.is_empty() || (presented.is_none() && self.optional) {
            return Ok(req);
        }
        let presented = presented.flatten().ok_or_else(|| {
            Status::unauthenticated(
                "missing `authorization: Bearer <api token>` (a token from berthd's api_token_file; BERTH_TOKEN for \
                 the CLI)",
            )
        })?;
        let scope = self.tokens.verify(presented).ok_or_else(|| {
            Status::unauthenticated("invalid API token: it is not one of the tokens in berthd's api_token_file")
        })?;
        req.extensions_mut().insert(scope);
        Ok(req)
    }
}

/// Who may call on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A token is needed whenever tokens are configured (TCP).
    Token,
    /// The listener is guarded by its file permissions (the Unix socket): a token is optional and, when
    /// sent, limits the caller to its scope.
    Socket,
}

/// The API's router: every service, behind the RPC latency layer.
pub type ApiRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<crate::metrics::RpcLatencyLayer, tower::layer::util::Identity>,
>;

/// The router serving every service.
pub async fn router<P: Platform<Agents = crate::agent_client::GrpcAgents>>(
    manager: Arc<BotManager<P>>,
    hub: Arc<crate::mcp::McpHub<P>>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    tokens: ApiTokens,
    health: &tonic_health::server::HealthReporter,
    tls: Option<tonic::transport::ServerTlsConfig>,
    access: Access,
) -> Result<ApiRouter, tonic::transport::Error> {
    let health_service = health::service(health);
    // Reflection (grpcurl, Python's grpc_reflection and friends), both versions clients use, each
    // listing every service served (health and both reflections included) with the protos' comments.
    // The descriptors are compiled in, so this cannot fail unless the build is broken, in which case
    // berthd serves without it and says so.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .and_then(|v1| {
            let alpha = reflection()
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .build_v1alpha()?;
            Ok((v1, alpha))
        })
        .map_err(|e| tracing::error!(error = %e, "gRPC reflection is unavailable"))
        .ok();
    health.set_serving::<BotServiceServer<bots::Bots<P>>>().await;
    health.set_serving::<DataServiceServer<data::Data<P>>>().await;
    health.set_serving::<ImageServiceServer<images::Images<P>>>().await;
    health.set_serving::<McpServiceServer<mcp::Mcp<P>>>().await;
    health.set_serving::<NodeServiceServer<nodes::Nodes>>().await;
    let gate =
        Gate { tokens, peers: cluster.as_ref().map(|c| c.credential().clone()), optional: access == Access::Socket };
    let auth = move |req| gate.check(req);
    let forward = forward::Forwarder::new(cluster.clone());
    let bots = BotServiceServer::new(bots::Bots::new(manager.clone(), forward.clone()));
    let images = ImageServiceServer::new(images::Images::new(manager.clone()));
    let data = DataServiceServer::new(data::Data::new(manager.clone(), forward.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mcp = McpServiceServer::new(mcp::Mcp::new(hub, forward.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let nodes = NodeServiceServer::new(nodes::Nodes::new(cluster));
    let proxy = ContainerServiceServer::new(proxy::Proxy::new(manager, forward.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        .layer(crate::metrics::RpcLatencyLayer)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(crate::agent_client::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(crate::agent_client::CONNECTION_WINDOW_BYTES))
        .add_service(InterceptedService::new(health_service, auth.clone()))
        .add_service(InterceptedService::new(bots, auth.clone()))
        .add_service(InterceptedService::new(images, auth.clone()))
        .add_service(InterceptedService::new(data, auth.clone()))
        .add_service(InterceptedService::new(mcp, auth.clone()))
        .add_service(InterceptedService::new(nodes, auth.clone()))
        .add_service(InterceptedService::new(proxy, auth.clone()));
    Ok(match reflection {
        Some((v1, alpha)) => router
            .add_service(InterceptedService::new(v1, auth.clone()))
            .add_service(InterceptedService::new(alpha, auth)),
        None => router,
    })
}
