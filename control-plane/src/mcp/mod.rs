//! MCP tool servers inside bots: the per-bot registry of named servers (`registry.rs`), sessions with
//! them relayed through the bot's agent with idle reaping (`session.rs`), and the Streamable HTTP
//! front-end (`http.rs`, message routing in `route.rs`, resumable SSE streams in `replay.rs`, the
//! stateless era in `stateless.rs`; in a cluster, sessions with another node's bot are opened on that
//! node, `remote.rs`). A session is one server process in the bot: no two clients share
//! a process, so JSON-RPC ids never collide and every server→client message has exactly one home. The one exception is stateless (2026-07-28) HTTP,
//! which the spec lets share a process: there berthd gives every request an id of its own.

mod front;
pub mod http;
mod registry;
mod remote;
mod replay;
pub mod route;
pub mod session;
mod stateless;

use std::sync::Arc;
use std::time::Duration;

use crate::bots::BotManager;
use crate::cluster::Cluster;
use crate::store::Store;

use crate::bots::Platform;
pub use crate::store::records::{LaunchSpec, McpServer};

/// Settings of MCP sessions.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// A session with no message either way for this long is closed (the longest a client may ask for).
    pub idle_timeout: Duration,
    /// The same for Streamable HTTP sessions, shorter: HTTP clients often never send DELETE.
    pub http_idle_timeout: Duration,
    /// Most open HTTP sessions (server processes) per bot and registered server; a new one closes the
    /// least recently used beyond it.
    pub http_max_sessions_per_server: usize,
    /// Most open HTTP sessions per bot, all its servers together.
    pub http_max_sessions_per_bot: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            idle_timeout: Duration::from_secs(15 * 60),
            http_idle_timeout: Duration::from_secs(5 * 60),
            http_max_sessions_per_server: 4,
            http_max_sessions_per_bot: 8,
        }
    }
}

/// The MCP side of berthd: registry, sessions, HTTP sessions. Bots are reached through their manager;
/// the store only for the registry's own records.
pub struct McpHub<P: Platform> {
    manager: Arc<BotManager<P>>,
    store: Store,
    config: McpConfig,
    /// In a cluster: where the HTTP front-end sends sessions with other nodes' bots.
    cluster: Option<Arc<Cluster>>,
}

impl<P: Platform> McpHub<P> {
    pub fn new(
        manager: Arc<BotManager<P>>,
        store: Store,
        config: McpConfig,
        cluster: Option<Arc<Cluster>>,
    ) -> McpHub<P> {
        McpHub { manager, store, config, cluster }
    }

    /// The node that owns `bot`, when it is another one.
    async fn peer_of(&self, bot: &str) -> crate::error::Result<Option<crate::cluster::Peer>> {
        match &self.cluster {
            Some(c) => Ok(match c.owner(bot).await? {
                Some(crate::cluster::Owner::Peer(p)) => Some(p),
                _ => None,
            }),
            None => Ok(None),
        }
    }

    /// Starts a session with registered server `server` of `bot`, on whichever node owns the bot.
    pub(crate) async fn open_anywhere(
        &self,
        bot: &str,
        server: &str,
        idle_ms: u32,
    ) -> crate::error::Result<session::SessionIo> {
        match self.peer_of(bot).await? {
            Some(peer) => remote::open(&peer, bot, server, idle_ms).await,
            None => self.open(bot, session::Target::Registered(server.to_string()), false, idle_ms).await,
        }
    }
}

/// A server name: lower-case letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 63.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "MCP server name `{name}` is invalid: use 1-63 lower-case letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names() {
        for ok in ["everything", "fs", "a.b_c-d", "0x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Fs", "-x", ".x", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
