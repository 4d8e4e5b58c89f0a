//! Cluster mode: many berthd on one PostgreSQL. This module owns this node's membership — joining under
//! its name, heartbeating, marking silent nodes lost (`membership.rs`) —, which node a bot's calls go to
//! ([`Cluster::owner`]) and the channels and credential that reach it (`peers.rs`), and the operator's
//! view of the nodes (list, cordon). Every clock reading comes from the database, so no node trusts another's clock.
//! Single-node berthd has no [`Cluster`] at all and behaves as before.

mod host;
mod membership;
mod peers;
mod placement;
mod routes;
pub mod subnets;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
pub use crate::store::records::{NodeRecord, NodeSpec};
use crate::store::{NameTaken, Store};

pub use host::{host_cpu_millis, host_memory_bytes, host_name};
pub use peers::{Credential, Peer, SCOPE_HEADER};
pub use placement::Need;

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating and taking new bots.
    Active,
    /// Heartbeating; no new bots are placed on it.
    Cordoned,
    /// Silent for longer than `node_lost_after`.
    Lost,
}

impl NodeState {
    pub fn of(n: &NodeRecord) -> NodeState {
        if n.lost_since_ms.is_some() {
            NodeState::Lost
        } else if n.cordoned {
            NodeState::Cordoned
        } else {
            NodeState::Active
        }
    }
}

/// A change in the cluster that its bots' watchers hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// This node marked that one lost.
    Lost(String),
    /// This node, marked lost, heartbeats again.
    Back(String),
}

/// What a node's bots hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bots: u64,
    /// The sum of their memory limits (an unlimited bot adds nothing).
    pub memory_bytes: u64,
}

/// Where a bot's calls are served.
#[derive(Debug, Clone)]
pub enum Owner {
    /// On this node.
    Here,
    /// On another node, live as far as the database knows.
    Peer(Peer),
}

/// How this node reaches the others.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    pub credential: Credential,
    /// The CA of the nodes' certificates when they serve TLS.
    pub ca: Option<Vec<u8>>,
}

/// This node's place in the cluster.
#[derive(Debug)]
pub struct Cluster {
    store: Store,
    me: NodeSpec,
    lost_after: Duration,
    peers: peers::Peers,
    /// Every node's state as of the last heartbeat round.
    states: watch::Sender<Vec<(String, NodeState)>>,
    /// Bots' owners read lately.
    routes: routes::Routes,
}

impl Cluster {
    /// Joins the cluster as `me`. Refused when a live node at another address holds the name.
    pub async fn join(store: Store, me: NodeSpec, lost_after: Duration, access: PeerAccess) -> Result<Arc<Cluster>> {
        let fresh_ms = i64::try_from(lost_after.as_millis()).unwrap_or(i64::MAX);
        if let Err(NameTaken { address, heartbeat_age_ms }) = store.join_cluster(&me, fresh_ms).await? {
            return Err(Error::AlreadyExists(format!(
                "node_name `{}` belongs to a live node at {address} (heartbeat {heartbeat_age_ms} ms ago); give \
                 each node its own node_name",
                me.name
            )));
        }
        let adopted = store.adopt_unowned_bots(&me.name).await?;
        tracing::info!(node = %me.name, address = %me.address, adopted, "joined the cluster");
        let peers = peers::Peers::new(access.credential, access.ca);
        let (states, _) = watch::channel(Vec::new());
        Ok(Arc::new(Cluster { store, me, lost_after, peers, states, routes: routes::Routes::default() }))
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// The secret peers present.
    pub fn credential(&self) -> &Credential {
        self.peers.credential()
    }

    /// Where `bot`'s calls go: `None` if there is no such bot. A bot on a lost node is UNAVAILABLE at
    /// once, naming the node and how long it has been silent; so is one whose node left the table.
    /// An owner read within `routes::FRESH` is used as it was, unless the last heartbeat round saw its
    /// node lost.
    pub async fn owner(&self, bot: &str) -> Result<Option<Owner>> {
        match self.routes.get(bot) {
            Some(None) => return Ok(Some(Owner::Here)),
            Some(Some((node, address))) if !self.seen_lost(&node) => {
                return Ok(Some(Owner::Peer(self.peers.get(&node, &address)?)));
            }
            _ => {}
        }
        let Some(o) = self.store.bot_owner(bot).await? else { return Ok(None) };
        if o.node.is_empty() || o.node == self.me.name {
            self.routes.put(bot, None);
            return Ok(Some(Owner::Here));
        }
        if let Some(ms) = o.lost_for_ms {
            return Err(Error::Unavailable(format!(
                "bot `{bot}` is on node `{}`, lost {:.1} s ago (no heartbeat for longer than node_lost_after): its \
                 calls fail until that node is back (berth node ls)",
                o.node,
                ms as f64 / 1000.0
            )));
        }
        if o.address.is_empty() {
            return Err(Error::Unavailable(format!(
                "bot `{bot}` is on node `{}`, which is no longer in the cluster",
                o.node
            )));
        }
        let peer = self.peers.get(&o.node, &o.address)?;
        self.routes.put(bot, Some((o.node, o.address)));
        Ok(Some(Owner::Peer(peer)))
    }

    /// Whether the last heartbeat round saw `node` lost.
    fn seen_lost(&self, node: &str) -> bool {
        self.states.borrow().iter().any(|(n, s)| n == node && *s == NodeState::Lost)
    }

    /// Heartbeats and loss marking until `stop`; the losses this node marks and its own return go to
    /// `changes`.
    pub fn spawn_membership(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
        changes: tokio::sync::mpsc::Sender<NodeChange>,
    ) -> JoinHandle<()> {
        tokio::spawn(membership::run(self.clone(), stop, changes))
    }

    /// Every node's state, as of the last heartbeat round (for health and metrics).
    pub fn states(&self) -> watch::Receiver<Vec<(String, NodeState)>> {
        self.states.subscribe()
    }

    /// The node a new bot goes to (see `placement.rs`).
    pub async fn place(&self, need: &Need) -> Result<Owner> {
        let nodes = self.nodes().await?;
        let name = placement::place(&nodes, need)?;
        if name == self.me.name {
            return Ok(Owner::Here);
        }
        let address = nodes.iter().find(|(n, _)| n.spec.name == name).map(|(n, _)| n.spec.address.clone());
        Ok(Owner::Peer(self.peers.get(&name, &address.unwrap_or_default())?))
    }

    /// The lost nodes and when each was marked lost (ms since the epoch).
    pub async fn lost_nodes(&self) -> Result<std::collections::HashMap<String, i64>> {
        Ok(self.store.lost_nodes().await?.into_iter().collect())
    }

    /// Every node, by name, with what its bots hold.
    pub async fn nodes(&self) -> Result<Vec<(NodeRecord, Usage)>> {
        let usage = self.store.bots_per_node().await?;
        let nodes = self.store.list_nodes().await?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let (bots, memory_bytes) =
                    usage.iter().find(|(name, ..)| *name == n.spec.name).map_or((0, 0), |&(_, b, m)| (b, m));
                (n, Usage { bots, memory_bytes })
            })
            .collect())
    }

    /// Stops placing new bots on `name` (or places them again).
    pub async fn cordon(&self, name: &str, cordoned: bool) -> Result<()> {
        self.store.set_cordoned(name, cordoned).await?;
        tracing::info!(node = name, cordoned, "node cordon changed");
        Ok(())
    }
}
