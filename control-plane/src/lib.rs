//! Berth's control plane.
//!
//! # Layout
//! - [`agent_client`]: connecting to a bot's `berth-agent` (Unix socket, bearer token, raised message
//!   limits). The control plane acts inside a container only through this client.
//!
//! The `berthd` daemon (containerd runtime, networking, store, API) arrives with the control-plane issue;
//! today this crate holds the client and the `berth` CLI's direct-to-agent mode.
#![forbid(unsafe_code)]

pub mod agent_client;
pub mod api;
pub mod archive;
pub mod bots;
pub mod error;
pub mod network;
pub mod runtime;
pub mod store;
pub mod time;
