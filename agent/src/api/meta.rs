//! Version, capabilities, stats and session management RPCs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use berth_proto::agent::v1 as pb;

use crate::error::Result;
use crate::process::reaper::own_children;
use crate::process::registry::SessionKind;
use crate::state::{Agent, MAX_MESSAGE_BYTES};

/// The protocol version this agent speaks (`berth.agent.v1`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Feature names clients can test for. Append only.
pub const CAPABILITIES: &[&str] = &[
    "files.read",
    "files.write.atomic",
    "files.list.paged",
    "files.stat",
    "files.mutate",
    "files.download",
    "files.upload.atomic",
    "files.watch",
    "exec.pipes",
    "exec.pty",
    "exec.signals",
    "mcp.stdio",
    "sessions.list",
    "sessions.kill",
    "stats",
    "process.detached",
];

pub fn version(agent: &Agent) -> pb::VersionResponse {
    pb::VersionResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES.iter().map(|s| (*s).to_string()).collect(),
        max_message_bytes: MAX_MESSAGE_BYTES as u64,
        max_mcp_message_bytes: agent.max_mcp_message_bytes as u64,
    }
}

pub fn stats(agent: &Agent) -> pb::StatsResponse {
    pb::StatsResponse {
        rss_bytes: rss_bytes(),
        uptime_ms: agent.started.elapsed().as_millis() as u64,
        exec_sessions: agent.registry.count(SessionKind::Exec) as u32,
        mcp_sessions: agent.registry.count(SessionKind::Mcp) as u32,
        child_processes: own_children().len() as u32,
        pid: std::process::id(),
        zombies_reaped: agent.reaper.reaped.load(Ordering::Relaxed),
    }
}

/// Resident set size of the agent, from /proc/self/status.
fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn list_sessions(agent: &Agent) -> pb::ListSessionsResponse {
    let sessions = agent
        .registry
        .list()
        .into_iter()
        .map(|s| pb::SessionInfo {
            session_id: s.id.clone(),
            kind: match s.kind {
                SessionKind::Exec => pb::SessionKind::Exec,
                SessionKind::Mcp => pb::SessionKind::Mcp,
            } as i32,
            pid: s.pid,
            argv: s.argv.clone(),
            tag: s.tag.clone(),
            started_at_ms: s.started_at_ms,
        })
        .collect();
    pb::ListSessionsResponse { sessions }
}

pub fn kill_session(agent: &Arc<Agent>, r: &pb::KillSessionRequest) -> Result<pb::KillSessionResponse> {
    agent.registry.kill(&r.session_id, r.signal)?;
    Ok(pb::KillSessionResponse {})
}
