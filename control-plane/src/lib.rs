//! Berth's control plane: the library behind the `berthd` daemon and the `berth` CLI.
//!
//! # Layout
//! - [`daemon`]: berthd as a library: start everything from a [`daemon::Config`], stop it.
//! - [`api`]: the gRPC services and the HTTP endpoint (metrics, health), thin handlers over [`bots`].
//! - [`bots`]: the domain: lifecycle, data operations, reconciliation.
//! - [`cluster`]: cluster mode: this node's membership (heartbeats, lost nodes), the nodes' list and cordons.
//! - [`runtime`], [`network`], [`store`]: containerd, CNI and the firewall, the database.
//! - [`agent_client`]: connecting to a bot's `berth-agent`. The control plane acts inside a container
//!   only through this client.
//! - [`archive`]: the data archive format; [`metrics`]: Prometheus series; [`error`]: the boundary error.
#![forbid(unsafe_code)]

pub mod agent_client;
pub mod api;
pub mod auth;
pub mod bots;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod events;
pub mod listen;
pub mod mcp;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod store;
pub mod sync;
pub mod text;
pub mod time;

/// The data archive format (its own crate, `control-plane/archive`, so the fuzzer links only it).
pub use berth_archive as archive;
