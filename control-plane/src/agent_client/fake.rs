//! A fake agent for the domain's unit tests: it answers `Version` unless told it is down, and its MCP
//! sessions run an echo server (every message comes back; closing stdin ends the session with exit 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use berth_proto::agent::v1 as pb;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::bot::{Agents, BotAgent, McpChannel, Opener};
use crate::error::{Error, Result};

/// Fake agents, shared by every bot; state is observable and settable by tests.
#[derive(Debug, Clone, Default)]
pub struct FakeAgents {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When set, connecting fails as an unreachable agent would.
    down: AtomicBool,
    connects: AtomicU32,
    sessions: AtomicU32,
}

impl FakeAgents {
    /// Makes every agent unreachable (`true`) or answer again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
    /// Connections made so far.
    pub fn connects(&self) -> u32 {
        self.state.connects.load(Ordering::SeqCst)
    }
    /// MCP sessions opened so far.
    pub fn sessions(&self) -> u32 {
        self.state.sessions.load(Ordering::SeqCst)
    }
}

/// One fake agent.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    state: Arc<State>,
}

impl Agents for FakeAgents {
    type Agent = FakeAgent;

    async fn connect(&self, target: String, _open: Opener, _token: &str) -> Result<FakeAgent> {
        if self.state.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(format!("the agent at {target} is unreachable: fake agent down")));
        }
        self.state.connects.fetch_add(1, Ordering::SeqCst);
        Ok(FakeAgent { state: self.state.clone() })
    }
}

impl BotAgent for FakeAgent {
    async fn version(&self) -> Result<pb::VersionResponse> {
        if self.state.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the bot's agent: fake agent down".into()));
        }
        Ok(pb::VersionResponse { agent_version: "fake".into(), ..Default::default() })
    }

    async fn mcp_session(&self, _open: pb::McpOpen) -> Result<McpChannel> {
        self.state.sessions.fetch_add(1, Ordering::SeqCst);
        let (to_agent, mut rx) = mpsc::channel::<In>(64);
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Some(Out::Started(pb::Started { pid: 4242, ..Default::default() })))).await;
            while let Some(frame) = rx.recv().await {
                let echo = match frame {
                    In::Message(m) => Out::Message(m),
                    In::CloseStdin(_) => break,
                    _ => continue,
                };
                if tx.send(Ok(Some(echo))).await.is_err() {
                    return;
                }
            }
            let exited = pb::Exited {
                message: "exited with status 0".into(),
                reason: pb::ExitReason::Exited as i32,
                ..Default::default()
            };
            let _ = tx.send(Ok(Some(Out::Exited(exited)))).await;
        });
        Ok(McpChannel { to_agent, from_agent: Box::pin(ReceiverStream::new(out)) })
    }
}
