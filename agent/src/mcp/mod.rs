//! MCP stdio specifics (the session driver itself is `api/mcp.rs`).

pub mod lines;
