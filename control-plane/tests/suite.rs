//! The control plane's integration tests, one module per concern, built as one test binary: each file
//! used to be its own binary, and compiling and linking twenty of them (each with its own copy of the
//! harness) was a third of CI. nextest still runs every test in its own process; pick a concern with
//! `cargo nextest run -p berth-control-plane -E 'test(/^data::/)'`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod support;

mod berthd;
mod cli_agent;
mod cluster;
mod cluster_tls;
mod containerd_runtime;
mod daemon;
mod data;
mod detached;
mod devenv;
mod events;
mod faults;
mod full_image;
mod layers;
mod mcp_conformance;
mod mcp_http;
mod mcp_probe;
mod mcp_sessions;
mod network_host;
mod observability;
mod outside_clients;
mod recovery;
mod security;
mod soak;
mod static_agent;
