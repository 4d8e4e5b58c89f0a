//! What the daemon does with the cluster's changes: the bots' events when their node is lost (announced
//! by the node that marked it) or back (by the node itself), a gRPC health entry per node (`node/<name>`,
//! SERVING unless lost), and the nodes-by-state metrics.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::bots::{BotManager, Platform};
use crate::cluster::{Cluster, NodeChange, NodeState};

/// The health service name of a cluster node.
pub fn node_service(name: &str) -> String {
    format!("node/{name}")
}

/// Starts membership with the tasks that hear its changes; all end with `stop`.
pub fn spawn<P: Platform>(
    cluster: &Arc<Cluster>,
    manager: Arc<BotManager<P>>,
    mut health: HealthReporter,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let (tx, mut changes) = mpsc::channel(64);
    let membership = cluster.spawn_membership(stop.clone(), tx);
    let events = tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let (node, kind, message) = match &change {
                NodeChange::Lost(n) => (n, "node_lost", format!("node `{n}` is lost: no heartbeat")),
                NodeChange::Back(n) => (n, "node_back", format!("node `{n}` is back")),
            };
            if let Err(e) = manager.announce_node(node, kind, &message).await {
                tracing::warn!(node = %node, error = %crate::error::chain(&e), "cannot announce a node's change to its bots");
            }
        }
    });
    let mut states = cluster.states();
    let mut stop = stop;
    let watch = tokio::spawn(async move {
        let mut known: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = states.borrow_and_update().clone();
            for gone in known.iter().filter(|k| !now.iter().any(|(n, _)| n == *k)) {
                health.clear_service_status(&node_service(gone)).await;
            }
            let mut counts = [("active", 0), ("cordoned", 0), ("lost", 0)];
            for (name, state) in &now {
                let (i, serving) = match state {
                    NodeState::Active => (0, ServingStatus::Serving),
                    NodeState::Cordoned => (1, ServingStatus::Serving),
                    NodeState::Lost => (2, ServingStatus::NotServing),
                };
                counts[i].1 += 1;
                health.set_service_status(node_service(name), serving).await;
            }
            crate::metrics::metrics().set_node_counts(&counts);
            known = now.into_iter().map(|(n, _)| n).collect();
        }
    });
    vec![membership, events, watch]
}
