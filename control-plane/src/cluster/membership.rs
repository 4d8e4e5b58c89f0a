//! The membership loop: every fifth of `node_lost_after`, stamp this node's heartbeat (the database's
//! clock), then mark lost any node silent for longer than `node_lost_after`. Any live node may mark
//! another; the statement marks each once. A database that cannot be reached is logged when it goes
//! and when it comes back, not on every beat; meanwhile the others see this node go lost, which is the
//! truth as far as the cluster can tell. Each round also publishes every node's state
//! ([`super::Cluster::states`]) and reports the losses this node marked and its own return
//! ([`super::NodeChange`]), which the daemon turns into the bots' events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Cluster, NodeChange, NodeState};
use crate::store::{Beat, StoreError};

pub(super) async fn run(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>, changes: mpsc::Sender<NodeChange>) {
    let every = (cluster.lost_after / 5).max(Duration::from_millis(50));
    let lost_after_ms = i64::try_from(cluster.lost_after.as_millis()).unwrap_or(i64::MAX);
    let mut failing = false;
    loop {
        let result = beat(&cluster, lost_after_ms, &changes).await;
        match (result, failing) {
            (Ok(()), true) => {
                tracing::info!(node = %cluster.me.name, "heartbeats reach the database again");
                failing = false;
            }
            (Err(e), false) => {
                tracing::warn!(node = %cluster.me.name, error = %crate::error::chain(&e),
                    "cannot send a heartbeat; other nodes will mark this one lost until it can");
                failing = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One round: this node's heartbeat, then the others' loss, then every node's state for watchers.
async fn beat(cluster: &Cluster, lost_after_ms: i64, changes: &mpsc::Sender<NodeChange>) -> Result<(), StoreError> {
    let store = &cluster.store;
    match store.heartbeat(&cluster.me.name).await {
        Ok(Beat::Alive) => {}
        Ok(Beat::Back) => {
            tracing::info!(node = %cluster.me.name, "this node was marked lost and is active again");
            let _ = changes.send(NodeChange::Back(cluster.me.name.clone())).await;
        }
        // Its row was removed (an operator cleaning up): join again, as at start.
        Err(StoreError::NotFound { .. }) => {
            if let Err(taken) = store.join_cluster(&cluster.me, lost_after_ms).await? {
                tracing::error!(node = %cluster.me.name, other = %taken.address,
                    "this node's name now belongs to another live node; not heartbeating under it");
            }
        }
        Err(e) => return Err(e),
    }
    for lost in store.mark_lost_nodes(lost_after_ms).await? {
        tracing::warn!(node = %lost, after_ms = lost_after_ms, "node lost: no heartbeat");
        let _ = changes.send(NodeChange::Lost(lost)).await;
    }
    let states = store.list_nodes().await?.iter().map(|n| (n.spec.name.clone(), NodeState::of(n))).collect();
    cluster.states.send_replace(states);
    Ok(())
}
