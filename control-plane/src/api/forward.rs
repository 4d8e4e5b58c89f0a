//! Calls for a bot another node owns, sent on to that node (cluster mode). Any node answers any call: a
//! handler asks [`Forwarder::peer`] where the call's bot lives and, when it is elsewhere, sends the same
//! method there with the same message (or stream) and hands back what the owner answers, streams
//! included, with backpressure both ways.
//!
//! Identity: the caller's token stays on the node it called. The owner is sent the cluster's secret and
//! the caller's scope ([`SCOPE_HEADER`]), and checks that scope again as it would its own caller's: a
//! forwarded call never gains scope, and one without a scope is refused, not taken for an unscoped one
//! (see `Gate` in `mod.rs`). A forwarded call is served by the node it reached or refused there; it is
//! never forwarded again, so a stale view of who owns a bot cannot make a loop.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::{MAX_MESSAGE_BYTES, Scope};
use crate::cluster::{Cluster, Owner, Peer, SCOPE_HEADER};
use crate::metrics::RpcMethod;

/// What a caller's metadata must not take to the peer: its credentials (replaced), and what describes
/// this connection's encoding rather than the call.
const NOT_FORWARDED: [&str; 9] = [
    "authorization",
    SCOPE_HEADER,
    "grpc-encoding",
    "grpc-accept-encoding",
    "user-agent",
    "content-length",
    "host",
    "connection",
    "te",
];

/// In a request's extensions: a peer forwarded it (it is served here or refused, never sent on).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// The scope a peer forwarded with its call; refused when missing or unreadable.
pub(super) fn forwarded_scope<T>(req: &Request<T>) -> Result<Scope, Status> {
    let missing = || {
        Status::unauthenticated(format!(
            "a call forwarded with the cluster's secret must carry its caller's scope in `{SCOPE_HEADER}`"
        ))
    };
    let text = req.metadata().get(SCOPE_HEADER).ok_or_else(missing)?.to_str().map_err(|_| missing())?;
    Scope::decode(text).map_err(|e| Status::unauthenticated(format!("`{SCOPE_HEADER}`: {e}")))
}

/// Decides where a bot's calls are served.
#[derive(Debug, Clone)]
pub struct Forwarder {
    cluster: Option<Arc<Cluster>>,
}

impl Forwarder {
    pub fn new(cluster: Option<Arc<Cluster>>) -> Forwarder {
        Forwarder { cluster }
    }

    /// The node to send a call for `bot` to, when that is not this one. `None` means serve it here: a
    /// single node, one of this node's bots, a bot that does not exist (this node says NOT_FOUND), or a
    /// call a peer forwarded. A bot whose node is lost fails UNAVAILABLE at once, naming the node.
    pub async fn peer<T>(&self, r: &Request<T>, bot: &str) -> Result<Option<Peer>, Status> {
        let Some(cluster) = &self.cluster else { return Ok(None) };
        if r.extensions().get::<Forwarded>().is_some() {
            return Ok(None);
        }
        match cluster.owner(bot).await? {
            Some(Owner::Peer(p)) => Ok(Some(p)),
            Some(Owner::Here) | None => Ok(None),
        }
    }
}

/// A response stream, whichever node it comes from.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Sends a unary call on to `peer`.
pub async fn unary<Q, A>(peer: &Peer, r: Request<Q>) -> Result<Response<A>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let (r, path) = outgoing(peer, r)?;
    client(peer).await?.unary(r, path, ProstCodec::<Q, A>::default()).await.map_err(|s| from_peer(peer, s))
}

/// Sends a call with a response stream on to `peer`.
pub async fn server_streaming<Q, A>(peer: &Peer, r: Request<Q>) -> Result<Response<BoxStream<A>>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let (r, path) = outgoing(peer, r)?;
    let response = client(peer)
        .await?
        .server_streaming(r, path, ProstCodec::<Q, A>::default())
        .await
        .map_err(|s| from_peer(peer, s))?;
    Ok(down(peer, response))
}

/// Sends a call with a request stream on to `peer`.
pub async fn client_streaming<Q, A, S>(peer: &Peer, r: Request<S>) -> Result<Response<A>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
    S: Stream<Item = Q> + Send + 'static,
{
    let (r, path) = outgoing(peer, r)?;
    client(peer).await?.client_streaming(r, path, ProstCodec::<Q, A>::default()).await.map_err(|s| from_peer(peer, s))
}

/// Sends a call with streams both ways on to `peer`.
pub async fn streaming<Q, A, S>(peer: &Peer, r: Request<S>) -> Result<Response<BoxStream<A>>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
    S: Stream<Item = Q> + Send + 'static,
{
    let (r, path) = outgoing(peer, r)?;
    let response =
        client(peer).await?.streaming(r, path, ProstCodec::<Q, A>::default()).await.map_err(|s| from_peer(peer, s))?;
    Ok(down(peer, response))
}

/// The caller's request stream as the forwarded call's: it ends where the caller's ends or fails (a
/// failed stream is a caller gone, which the owner sees when this call is dropped).
pub fn upstream<T: Send + 'static>(s: Streaming<T>) -> impl Stream<Item = T> + Send + 'static {
    s.map_while(Result::ok)
}

async fn client(peer: &Peer) -> Result<Grpc<tonic::transport::Channel>, Status> {
    let mut grpc = Grpc::new(peer.channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("node `{}` at {} is unreachable: {e}", peer.node, peer.address)))?;
    Ok(grpc)
}

/// The request for the peer: the same method, the caller's metadata (its deadline and `berth-bot` with
/// it) without its credentials, and the cluster's secret with the caller's scope.
fn outgoing<T>(peer: &Peer, r: Request<T>) -> Result<(Request<T>, PathAndQuery), Status> {
    let method = r
        .extensions()
        .get::<RpcMethod>()
        .ok_or_else(|| Status::internal("the method of a call to forward is not known (berthd bug)"))?;
    let path = PathAndQuery::try_from(method.0.as_str())
        .map_err(|e| Status::internal(format!("the method {:?} is not a path: {e}", method.0)))?;
    let scope = Scope::of(&r).encode();
    let (mut metadata, _, message) = r.into_parts();
    for name in NOT_FORWARDED {
        metadata.remove(name);
    }
    let bearer = MetadataValue::try_from(format!("Bearer {}", peer.credential.secret()))
        .map_err(|_| Status::internal("the cluster secret is not valid metadata"))?;
    metadata.insert("authorization", bearer);
    let scope = MetadataValue::try_from(scope)
        .map_err(|_| Status::invalid_argument("a bot name in this token's scope is not valid metadata"))?;
    metadata.insert(SCOPE_HEADER, scope);
    Ok((Request::from_parts(metadata, Default::default(), message), path))
}

/// The owner's answers pass unchanged; failing to reach it says which node it was.
fn from_peer(peer: &Peer, s: Status) -> Status {
    if s.code() == Code::Unavailable {
        Status::unavailable(format!("via node `{}` at {}: {}", peer.node, peer.address, s.message()))
    } else {
        s
    }
}

fn down<A: Send + 'static>(peer: &Peer, r: Response<Streaming<A>>) -> Response<BoxStream<A>> {
    let peer = peer.clone();
    r.map(|s| -> BoxStream<A> { Box::pin(s.map(move |item| item.map_err(|e| from_peer(&peer, e)))) })
}
