//! MCP stdio specifics (the session driver itself is `api/mcp.rs`).

pub use berth_agent_input::lines;
