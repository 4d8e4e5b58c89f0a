//! berth-agent: the gRPC server that runs as PID 1 in every bot container.
//!
//! # Layout
//! - [`config`]: the command line.
//! - [`server`]: listeners, auth, health, graceful shutdown.
//! - [`auth`]: bearer-token check on every RPC.
//! - [`api`]: the `ContainerService` handlers (thin) and the exec/MCP stream drivers; the only place that
//!   maps [`error::Error`] to gRPC statuses.
//! - [`fs`]: file operations, all confined to the root with `openat2(RESOLVE_IN_ROOT)`.
//! - [`process`]: spawning, process groups, ptys, output pumps, the session registry, PID 1 reaping.
//! - [`mcp`]: MCP stdio framing.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod fs;
pub mod mcp;
pub mod process;
pub mod server;
pub mod state;
