//! What a bot is, as the control plane records it.

use std::collections::BTreeMap;

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
    pub network: Option<crate::network::Attachment>,
    /// Where it may connect beyond the host.
    pub egress: crate::network::Egress,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotEvent {
    pub name: String,
    pub kind: String,
    pub state: BotState,
    pub message: String,
    pub at_ms: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Checks a bot name: 1-63 of `[a-z0-9-]`, starting with a letter, not ending with `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("bot name {name:?} is invalid: use 1-63 lowercase letters, digits and `-`, starting with a letter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "bot-1", "x9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1bot", "Bot", "bot-", "a_b", "a/b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [BotState::Creating, BotState::Stopped, BotState::Running, BotState::Error, BotState::Deleting] {
            assert_eq!(BotState::parse(s.as_str()), Some(s));
        }
    }
}
