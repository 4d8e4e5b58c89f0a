//! What a [`super::BotManager`] runs on, as one type parameter: a container runtime, a network and the
//! way to reach bots' agents. Real berthd runs on containerd, CNI and the agent protocol
//! (`daemon::Host`); the domain's unit tests on fakes.

use crate::agent_client::Agents;
use crate::network::Network;
use crate::runtime::ContainerRuntime;

/// A container runtime, a network and agents, chosen together.
pub trait Platform: Send + Sync + 'static {
    type Runtime: ContainerRuntime;
    type Network: Network;
    type Agents: Agents;
}
