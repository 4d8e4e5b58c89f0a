//! What a [`super::BotManager`] runs on, as one type parameter: a container runtime and a network. Real
//! berthd runs on containerd and CNI (`daemon::Host`); the domain's unit tests on fakes.

use crate::network::Network;
use crate::runtime::ContainerRuntime;

/// A container runtime and a network, chosen together.
pub trait Platform: Send + Sync + 'static {
    type Runtime: ContainerRuntime;
    type Network: Network;
}
