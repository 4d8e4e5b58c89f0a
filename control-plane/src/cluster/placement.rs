//! Where a new bot goes: a pure choice over the node table and what each node's bots hold. The node the
//! request names, if it can take the bot; otherwise, among the active nodes whose labels match the
//! selector and that have room (fewer bots than `max_bots`, the bot's memory limit within what their
//! bots' limits leave of their capacity), the one with the most memory left, then the fewest bots, then
//! the first by name. When none can, the error says what is short on each node.
//!
//! The choice reads a snapshot: two creates placed at the same moment may both land on a node with room
//! for one. Capacity is what operators declare, not what the kernel enforces, so that overshoot by a bot
//! is accepted rather than serialised through the database.

use std::collections::BTreeMap;

use super::{NodeRecord, NodeState, Usage};
use crate::error::{Error, Result};

/// What a bot asks of its node.
#[derive(Debug, Clone, Default)]
pub struct Need {
    /// Its memory limit (0 when unlimited: it reserves nothing).
    pub memory_bytes: u64,
    /// The node the request names, if any.
    pub node: Option<String>,
    /// Labels the node must carry.
    pub selector: BTreeMap<String, String>,
}

/// The node to create the bot on.
pub fn place(nodes: &[(NodeRecord, Usage)], need: &Need) -> Result<String> {
    if let Some(name) = &need.node {
        let (n, usage) = nodes.iter().find(|(n, _)| n.spec.name == *name).ok_or_else(|| {
            Error::NotFound(format!("node `{name}` is not in the cluster (berth node ls lists the nodes)"))
        })?;
        return match why_not(n, usage, need) {
            None => Ok(name.clone()),
            Some(Why::Lost) => Err(Error::Unavailable(format!("node `{name}` is lost: it cannot take a bot"))),
            Some(why) => Err(Error::ResourceExhausted(format!("node `{name}` cannot take the bot: {why}"))),
        };
    }
    let best = nodes.iter().filter(|(n, u)| why_not(n, u, need).is_none()).max_by(|(a, ua), (b, ub)| {
        free(a, ua).cmp(&free(b, ub)).then(ub.bots.cmp(&ua.bots)).then(b.spec.name.cmp(&a.spec.name))
    });
    match best {
        Some((n, _)) => Ok(n.spec.name.clone()),
        None if nodes.is_empty() => Err(Error::Unavailable("the cluster has no nodes".into())),
        None => {
            let reasons: Vec<String> = nodes
                .iter()
                .filter_map(|(n, u)| why_not(n, u, need).map(|w| format!("{}: {w}", n.spec.name)))
                .collect();
            Err(Error::ResourceExhausted(format!("no node can take the bot ({})", reasons.join("; "))))
        }
    }
}

/// Memory a node's capacity has left after its bots' limits.
fn free(n: &NodeRecord, u: &Usage) -> u64 {
    n.spec.memory_bytes.saturating_sub(u.memory_bytes)
}

/// Why a node cannot take a bot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    Lost,
    Cordoned,
    Label(String),
    Full(u64),
    Memory { free: u64, need: u64 },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Lost => write!(f, "lost"),
            Why::Cordoned => write!(f, "cordoned"),
            Why::Label(l) => write!(f, "no label {l}"),
            Why::Full(max) => write!(f, "holds its most bots ({max}, node_max_bots)"),
            Why::Memory { free, need } => {
                write!(f, "{} MiB of memory left, the bot's limit is {} MiB", free >> 20, need.div_ceil(1 << 20))
            }
        }
    }
}

fn why_not(n: &NodeRecord, u: &Usage, need: &Need) -> Option<Why> {
    match NodeState::of(n) {
        NodeState::Lost => return Some(Why::Lost),
        NodeState::Cordoned => return Some(Why::Cordoned),
        NodeState::Active => {}
    }
    if let Some((k, v)) = need.selector.iter().find(|(k, v)| n.spec.labels.get(*k) != Some(*v)) {
        return Some(Why::Label(format!("{k}={v}")));
    }
    if u.bots >= n.spec.max_bots {
        return Some(Why::Full(n.spec.max_bots));
    }
    let left = free(n, u);
    if need.memory_bytes > left {
        return Some(Why::Memory { free: left, need: need.memory_bytes });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::NodeSpec;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, memory: u64, zone: &str) -> NodeRecord {
        NodeRecord {
            spec: NodeSpec {
                name: name.into(),
                address: format!("{name}:7443"),
                memory_bytes: memory,
                cpu_millis: 2000,
                max_bots: 3,
                labels: [("zone".to_string(), zone.to_string())].into(),
            },
            cordoned: false,
            heartbeat_age_ms: 0,
            lost_since_ms: None,
            joined_at_ms: 0,
            subnet: String::new(),
        }
    }

    fn used(bots: u64, memory: u64) -> Usage {
        Usage { bots, memory_bytes: memory }
    }

    fn need(memory: u64) -> Need {
        Need { memory_bytes: memory, ..Default::default() }
    }

    #[test]
    fn most_free_memory_wins_then_fewest_bots_then_the_name() {
        let nodes = vec![(node("a", 4 * GIB, "x"), used(1, 3 * GIB)), (node("b", 4 * GIB, "x"), used(2, GIB))];
        assert_eq!(place(&nodes, &need(GIB)).unwrap(), "b");
        let tie = vec![(node("a", 4 * GIB, "x"), used(2, GIB)), (node("b", 4 * GIB, "x"), used(1, GIB))];
        assert_eq!(place(&tie, &need(GIB)).unwrap(), "b");
        let same = vec![(node("b", 4 * GIB, "x"), used(1, GIB)), (node("a", 4 * GIB, "x"), used(1, GIB))];
        assert_eq!(place(&same, &need(GIB)).unwrap(), "a");
    }

    #[test]
    fn cordoned_lost_full_and_unlabelled_nodes_are_skipped_and_named_when_nothing_fits() {
        let mut cordoned = node("a", 8 * GIB, "x");
        cordoned.cordoned = true;
        let mut lost = node("b", 8 * GIB, "x");
        lost.lost_since_ms = Some(1);
        let nodes = vec![
            (cordoned, used(0, 0)),
            (lost, used(0, 0)),
            (node("c", 8 * GIB, "x"), used(3, 0)),
            (node("d", 8 * GIB, "y"), used(0, 0)),
            (node("e", 2 * GIB, "x"), used(1, GIB + GIB / 2)),
        ];
        let mut n = need(GIB);
        n.selector.insert("zone".into(), "x".into());
        let e = place(&nodes, &n).unwrap_err();
        let Error::ResourceExhausted(m) = e else { panic!("{e:?}") };
        for part in [
            "a: cordoned",
            "b: lost",
            "c: holds its most bots (3",
            "d: no label zone=x",
            "e: 512 MiB of memory left, the bot's limit is 1024 MiB",
        ] {
            assert!(m.contains(part), "{part:?} in {m}");
        }
        // Without the selector, d takes it; an unlimited bot fits e.
        assert_eq!(place(&nodes, &need(GIB)).unwrap(), "d");
        let only_e = vec![nodes[4].clone()];
        assert_eq!(place(&only_e, &need(0)).unwrap(), "e");
    }

    #[test]
    fn a_named_node_is_used_when_it_can_take_the_bot() {
        let mut lost = node("b", 8 * GIB, "x");
        lost.lost_since_ms = Some(1);
        let nodes = vec![(node("a", 8 * GIB, "x"), used(0, 0)), (lost, used(0, 0)), (node("c", GIB, "x"), used(0, 0))];
        let on = |name: &str, memory| Need { memory_bytes: memory, node: Some(name.into()), ..Default::default() };
        assert_eq!(place(&nodes, &on("c", GIB)).unwrap(), "c", "named, though a has more room");
        assert!(matches!(place(&nodes, &on("b", GIB)), Err(Error::Unavailable(_))));
        assert!(matches!(place(&nodes, &on("c", 2 * GIB)), Err(Error::ResourceExhausted(_))));
        assert!(matches!(place(&nodes, &on("z", GIB)), Err(Error::NotFound(_))));
        assert!(matches!(place(&[], &need(GIB)), Err(Error::Unavailable(_))));
    }
}
