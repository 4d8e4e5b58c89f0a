//! `berth node ls|cordon|uncordon`: the nodes of a cluster (NodeService).

use berth_proto::controlplane::v1 as pb;

use crate::daemon::{Conn, status_err};

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Every node: name, address, state, its bots, memory reserved by their limits of what it offers,
    /// CPUs, seconds since its heartbeat, labels.
    Ls,
    /// Place no new bots on NAME (its bots keep running).
    Cordon { name: String },
    /// Place new bots on NAME again.
    Uncordon { name: String },
}

pub async fn node(conn: &Conn, cmd: NodeCommand) -> anyhow::Result<i32> {
    let mut c = pb::node_service_client::NodeServiceClient::with_interceptor(conn.channel().await?, conn.auth()?);
    match cmd {
        NodeCommand::Ls => {
            let nodes = c.list_nodes(pb::ListNodesRequest {}).await.map_err(status_err("list nodes"))?.into_inner();
            println!(
                "{:<20} {:<24} {:<9} {:>5} {:>15} {:>6} {:>9}  {:<18} LABELS",
                "NAME", "ADDRESS", "STATE", "BOTS", "MEMORY", "CPUS", "HEARTBEAT", "SUBNET"
            );
            for n in nodes.nodes {
                let mut name = n.name.clone();
                if n.this_node {
                    name.push('*');
                }
                let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let memory = format!("{}/{}M", n.memory_reserved_bytes >> 20, n.memory_bytes >> 20);
                println!(
                    "{:<20} {:<24} {:<9} {:>5} {:>15} {:>6} {:>8.1}s  {:<18} {}",
                    name,
                    n.address,
                    state_name(n.state),
                    n.bots,
                    memory,
                    format!("{:.1}", n.cpu_millis as f64 / 1000.0),
                    n.heartbeat_age_ms as f64 / 1000.0,
                    if n.subnet.is_empty() { "-" } else { &n.subnet },
                    labels.join(",")
                );
            }
        }
        NodeCommand::Cordon { name } => {
            c.cordon_node(pb::CordonNodeRequest { name: name.clone() }).await.map_err(status_err("cordon"))?;
            println!("{name}: cordoned (no new bots)");
        }
        NodeCommand::Uncordon { name } => {
            c.uncordon_node(pb::UncordonNodeRequest { name: name.clone() }).await.map_err(status_err("uncordon"))?;
            println!("{name}: takes new bots");
        }
    }
    Ok(0)
}

fn state_name(s: i32) -> &'static str {
    match pb::NodeState::try_from(s) {
        Ok(pb::NodeState::Active) => "active",
        Ok(pb::NodeState::Cordoned) => "cordoned",
        Ok(pb::NodeState::Lost) => "lost",
        _ => "unknown",
    }
}
