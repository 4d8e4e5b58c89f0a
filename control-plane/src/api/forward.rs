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

use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

pub use super::streams::{BoxStream, Broken, split, split_after, upstream};
use super::streams::{guard, guard_open, until_broken};
use super::{MAX_MESSAGE_BYTES, Scope};
use crate::cluster::{Cluster, Need, Owner, Peer, SCOPE_HEADER};
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

/// A call's way to the node that owns its bot, with the scope it is sent with: the caller's, cut down to
/// that one bot (the owner is given no more than the call needs).
#[derive(Debug, Clone)]
pub struct Hop {
    pub peer: Peer,
    scope: Scope,
}

impl Hop {
    fn new<T>(r: &Request<T>, peer: Peer, bot: &str) -> Result<Hop, Status> {
        let scope = Scope::of(r).narrow(bot).ok_or_else(|| super::scope::denied(bot))?;
        Ok(Hop { peer, scope })
    }
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
    pub async fn peer<T>(&self, r: &Request<T>, bot: &str) -> Result<Option<Hop>, Status> {
        let Some(cluster) = &self.cluster else { return Ok(None) };
        if r.extensions().get::<Forwarded>().is_some() {
            return Ok(None);
        }
        match cluster.owner(bot).await? {
            Some(Owner::Peer(p)) => Ok(Some(Hop::new(r, p, bot)?)),
            Some(Owner::Here) | None => Ok(None),
        }
    }

    /// When each lost node was marked lost (none outside a cluster), for the bots' `node_lost_since_ms`.
    pub async fn lost_nodes(&self) -> Result<std::collections::HashMap<String, i64>, Status> {
        match &self.cluster {
            Some(c) => Ok(c.lost_nodes().await?),
            None => Ok(Default::default()),
        }
    }

    /// The node to create a bot on, when that is not this one (see `cluster::placement`). A forwarded
    /// create is made here (it names this node); outside a cluster, `node` and `node_selector` are
    /// refused rather than ignored.
    pub async fn place<T>(&self, r: &Request<T>, bot: &str, need: Need) -> Result<Option<Hop>, Status> {
        let Some(cluster) = &self.cluster else {
            if need.node.is_some() || !need.selector.is_empty() {
                return Err(Status::failed_precondition(
                    "`node` and `node_selector` place a bot in a cluster; this berthd is not part of one",
                ));
            }
            return Ok(None);
        };
        if r.extensions().get::<Forwarded>().is_some() {
            return match need.node {
                Some(n) if n != cluster.name() => Err(Status::failed_precondition(format!(
                    "a create forwarded to node `{}` names node `{n}`",
                    cluster.name()
                ))),
                _ => Ok(None),
            };
        }
        match cluster.place(&need).await? {
            Owner::Peer(p) => Ok(Some(Hop::new(r, p, bot)?)),
            Owner::Here => Ok(None),
        }
    }
}

/// Sends a unary call on to the bot's node.
pub async fn unary<Q, A>(hop: &Hop, r: Request<Q>) -> Result<Response<A>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let (r, path) = outgoing(hop, r)?;
    let peer = &hop.peer;
    client(peer).await?.unary(r, path, ProstCodec::<Q, A>::default()).await.map_err(|s| from_peer(peer, s))
}

/// Sends a call with a response stream on to the bot's node.
pub async fn server_streaming<Q, A>(hop: &Hop, r: Request<Q>) -> Result<Response<BoxStream<A>>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let (r, path) = outgoing(hop, r)?;
    let peer = &hop.peer;
    let response = client(peer)
        .await?
        .server_streaming(r, path, ProstCodec::<Q, A>::default())
        .await
        .map_err(|s| from_peer(peer, s))?;
    Ok(down(peer, response))
}

/// Sends a call with a request stream on to the bot's node; dropped if the caller's stream breaks.
pub async fn client_streaming<Q, A, S>(hop: &Hop, r: Request<S>, broken: Broken) -> Result<Response<A>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
    S: Stream<Item = Q> + Send + 'static,
{
    let (r, path) = outgoing(hop, r)?;
    let peer = &hop.peer;
    let call = async {
        client(peer)
            .await?
            .client_streaming(r, path, ProstCodec::<Q, A>::default())
            .await
            .map_err(|s| from_peer(peer, s))
    };
    guard(call, broken).await
}

/// Sends a call with streams both ways on to the bot's node; dropped if the caller's stream breaks.
pub async fn streaming<Q, A, S>(hop: &Hop, r: Request<S>, broken: Broken) -> Result<Response<BoxStream<A>>, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
    S: Stream<Item = Q> + Send + 'static,
{
    let (r, path) = outgoing(hop, r)?;
    let peer = &hop.peer;
    let call = async {
        client(peer).await?.streaming(r, path, ProstCodec::<Q, A>::default()).await.map_err(|s| from_peer(peer, s))
    };
    let (response, broken) = guard_open(call, broken).await?;
    Ok(down(peer, response).map(|s| until_broken(s, broken)))
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
fn outgoing<T>(hop: &Hop, r: Request<T>) -> Result<(Request<T>, PathAndQuery), Status> {
    let method = r
        .extensions()
        .get::<RpcMethod>()
        .ok_or_else(|| Status::internal("the method of a call to forward is not known (berthd bug)"))?;
    let path = PathAndQuery::try_from(method.0.as_str())
        .map_err(|e| Status::internal(format!("the method {:?} is not a path: {e}", method.0)))?;
    let scope = hop.scope.encode();
    let (mut metadata, _, message) = r.into_parts();
    for name in NOT_FORWARDED {
        metadata.remove(name);
    }
    let bearer = MetadataValue::try_from(format!("Bearer {}", hop.peer.credential.secret()))
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
