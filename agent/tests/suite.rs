//! The agent's integration tests against the real `berth-agent` binary, one module per concern, built
//! as one test binary (nextest runs each test in its own process); pick a concern with
//! `cargo nextest run -p berth-agent -E 'test(/^exec::/)'`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

mod detached;
mod exec;
mod files;
mod mcp;
mod transfer;
mod watch_auth;
