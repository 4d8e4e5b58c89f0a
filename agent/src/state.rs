//! What every request handler shares: the root, the session registry, the detached processes and the
//! agent's limits.

use std::sync::Arc;
use std::time::Instant;

use crate::fs::root::Root;
use crate::process::detached::Detached;
use crate::process::reaper::ReaperStats;
use crate::process::registry::Registry;

// Largest gRPC message accepted or sent (the largest MCP message plus framing fits).
pub use berth_proto::wire::MAX_MESSAGE_BYTES;
/// Largest MCP message (one stdout line) relayed by default. A 16 MiB tool argument echoed back by a
/// server that returns it twice (text and structured content) needs about 33 MiB.
pub const MAX_MCP_MESSAGE_BYTES: usize = 48 << 20;

/// Shared agent state.
#[derive(Debug)]
pub struct Agent {
    pub root: Arc<Root>,
    pub registry: Arc<Registry>,
    /// Detached processes and their output journals.
    pub detached: Arc<Detached>,
    pub reaper: Arc<ReaperStats>,
    pub started: Instant,
    pub max_mcp_message_bytes: usize,
}
