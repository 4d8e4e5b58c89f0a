//! `NodeService`: one-line handlers over [`Cluster`]. A berthd not in a cluster answers
//! FAILED_PRECONDITION naming the setting.

use std::sync::Arc;

use berth_proto::controlplane::v1 as pb;
use pb::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, NodeRecord, NodeState, Usage};

pub struct Nodes {
    cluster: Option<Arc<Cluster>>,
}

impl Nodes {
    pub fn new(cluster: Option<Arc<Cluster>>) -> Self {
        Nodes { cluster }
    }

    fn cluster(&self) -> Result<&Cluster, Status> {
        self.cluster.as_deref().ok_or_else(|| {
            Status::failed_precondition("this berthd is not part of a cluster (berthd's `cluster` setting is off)")
        })
    }
}

fn node((n, usage): (NodeRecord, Usage), this: &str) -> pb::Node {
    let state = match NodeState::of(&n) {
        NodeState::Active => pb::NodeState::Active,
        NodeState::Cordoned => pb::NodeState::Cordoned,
        NodeState::Lost => pb::NodeState::Lost,
    };
    pb::Node {
        this_node: n.spec.name == this,
        name: n.spec.name,
        address: n.spec.address,
        state: state.into(),
        cordoned: n.cordoned,
        memory_bytes: n.spec.memory_bytes,
        cpu_millis: n.spec.cpu_millis,
        max_bots: n.spec.max_bots,
        labels: n.spec.labels.into_iter().collect(),
        heartbeat_age_ms: n.heartbeat_age_ms,
        lost_since_ms: n.lost_since_ms.unwrap_or(0),
        joined_at_ms: n.joined_at_ms,
        bots: usage.bots,
        memory_reserved_bytes: usage.memory_bytes,
        subnet: n.subnet,
    }
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn list_nodes(&self, _r: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let c = self.cluster()?;
        let nodes = c.nodes().await?.into_iter().map(|n| node(n, c.name())).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn cordon_node(&self, r: Request<pb::CordonNodeRequest>) -> Result<Response<pb::CordonNodeResponse>, Status> {
        super::Scope::of(&r).admin("cordon nodes")?;
        self.cluster()?.cordon(&r.get_ref().name, true).await?;
        Ok(Response::new(pb::CordonNodeResponse {}))
    }

    async fn uncordon_node(
        &self,
        r: Request<pb::UncordonNodeRequest>,
    ) -> Result<Response<pb::UncordonNodeResponse>, Status> {
        super::Scope::of(&r).admin("uncordon nodes")?;
        self.cluster()?.cordon(&r.get_ref().name, false).await?;
        Ok(Response::new(pb::UncordonNodeResponse {}))
    }
}
