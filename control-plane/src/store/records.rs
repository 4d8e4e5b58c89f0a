//! The records the store keeps, as plain data: bots and their events, data operations, registered MCP
//! servers. They live here, below the domain that gives them meaning (`bots/`, `mcp/` re-export them), so
//! the store never imports the domain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::network::{Attachment, Egress};
use crate::runtime::Limits;

/// Where a bot is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotState {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    Deleting,
    Error,
}

impl BotState {
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Creating => "creating",
            BotState::Stopped => "stopped",
            BotState::Starting => "starting",
            BotState::Running => "running",
            BotState::Stopping => "stopping",
            BotState::Deleting => "deleting",
            BotState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<BotState> {
        Some(match s {
            "creating" => BotState::Creating,
            "stopped" => BotState::Stopped,
            "starting" => BotState::Starting,
            "running" => BotState::Running,
            "stopping" => BotState::Stopping,
            "deleting" => BotState::Deleting,
            "error" => BotState::Error,
            _ => return None,
        })
    }
}

/// A bot's durable record.
#[derive(Debug, Clone, PartialEq)]
pub struct BotRecord {
    pub name: String,
    pub container_id: String,
    pub image: String,
    pub state: BotState,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub limits: Limits,
    /// The agent's bearer token (never returned by the API).
    pub token: String,
    pub last_error: String,
    /// Restarts by the supervisor (a task that died, an agent that stopped answering).
    pub restart_count: u64,
    /// The user wants it running: the reconciler restarts its task if it dies.
    pub desired_running: bool,
    /// How its task last ended, e.g. "killed by the OOM killer (exit 137)"; empty if it never ended.
    pub last_exit: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The network attachment, once made.
    pub network: Option<Attachment>,
    /// Where it may connect beyond the host.
    pub egress: Egress,
    /// The node that owns it (cluster mode): only that node runs, supervises and changes it. Empty on a
    /// single node.
    pub node: String,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotEvent {
    /// Unique from the moment it is announced, so writing it twice (a spill drained again after a crash)
    /// stores it once.
    pub id: String,
    /// Its place in the cluster-wide order, given when it is stored (0 before).
    pub seq: i64,
    pub name: String,
    pub kind: String,
    pub state: BotState,
    pub message: String,
    pub at_ms: i64,
    /// The node that announced it; empty on a single node.
    pub node: String,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OpState> {
        Some(match s {
            "running" => OpState::Running,
            "succeeded" => OpState::Succeeded,
            "failed" => OpState::Failed,
            _ => return None,
        })
    }
}

/// One operation's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: String,
    pub bot: String,
    /// `snapshot`, `rollback`, `export`, `import`, `backup`.
    pub kind: String,
    pub state: OpState,
    /// What it acts on or produced (a snapshot name, a file).
    pub target: String,
    /// What a restarted berthd needs to settle it (keys it made, keys it replaces).
    pub detail: serde_json::Value,
    /// Bytes (or items) done, and the total when known (0 = unknown).
    pub progress_done: u64,
    pub progress_total: u64,
    pub error: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// How a registered server is started in its bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory in the bot; empty = the agent's default.
    #[serde(default)]
    pub cwd: String,
}

/// A server registered for a bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    pub bot: String,
    pub name: String,
    pub spec: LaunchSpec,
    pub created_at_ms: i64,
}

/// What a node offers the cluster, as it says when it joins (and again with each heartbeat, so a node
/// started with new settings is seen with them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// What peers and clients dial (`host:port`).
    pub address: String,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub max_bots: u64,
    pub labels: BTreeMap<String, String>,
}

/// A node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub spec: NodeSpec,
    /// No new bots are placed on it.
    pub cordoned: bool,
    /// How long ago its last heartbeat was, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// When it was marked lost (database clock, ms since the epoch); `None` while it heartbeats.
    pub lost_since_ms: Option<i64>,
    pub joined_at_ms: i64,
    /// Its bot subnet from the cluster's range; empty when it uses its own `subnet` setting.
    pub subnet: String,
}
