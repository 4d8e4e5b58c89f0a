//! What the domain asks of a bot's agent, behind a trait like the runtime and the network: [`Agents`]
//! connects to one bot's agent, [`BotAgent`] is the connection. The real one ([`GrpcAgents`]) speaks
//! the agent protocol over the bot's socket; `fake` answers from memory for the domain's unit tests.
//! Statuses become [`Error`]s here (see [`super::to_error`]); no transport type reaches the domain.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use berth_proto::agent::v1 as pb;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::{AgentClient, BearerAuth};
use crate::error::{Error, Result};

/// Opens the agent's socket afresh for each connection (an `O_PATH` descriptor found without following
/// links: see `bots::agent_dir`).
pub type Opener = Arc<dyn Fn() -> std::io::Result<OwnedFd> + Send + Sync>;

/// What the agent sends on an MCP session: its frames in order, or why the session broke. A frame
/// with nothing in it (a newer agent's) is passed as `None`.
pub type McpFrames = Pin<Box<dyn Stream<Item = Result<Option<Out>>> + Send>>;

/// An MCP session the agent was asked to open: frames to it (the first, the open, is already sent)
/// and frames from it. Dropping `to_agent` closes the request side; dropping `from_agent` ends the
/// session, which the agent treats as its client going away.
pub struct McpChannel {
    pub to_agent: mpsc::Sender<In>,
    pub from_agent: McpFrames,
}

/// Connects to bots' agents.
pub trait Agents: Send + Sync + 'static {
    type Agent: BotAgent;
    /// Connects to the agent behind `open` with the bot's `token`; `target` names it in errors.
    fn connect(&self, target: String, open: Opener, token: &str) -> impl Future<Output = Result<Self::Agent>> + Send;
}

/// One bot's agent, connected (cheap to clone; clones share the connection).
pub trait BotAgent: Clone + Send + Sync + 'static {
    /// Asks the agent its version: answering at all is what readiness and health need.
    fn version(&self) -> impl Future<Output = Result<pb::VersionResponse>> + Send;
    /// Opens an MCP session with `open` as its first frame.
    fn mcp_session(&self, open: pb::McpOpen) -> impl Future<Output = Result<McpChannel>> + Send;
}

/// The real agents, over the agent protocol (gRPC on each bot's Unix socket).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcAgents;

/// A connection to one agent over the agent protocol.
#[derive(Debug, Clone)]
pub struct GrpcAgent {
    client: AgentClient,
}

impl GrpcAgent {
    /// The protocol client itself, for the API's pass-through of the agent protocol (an edge: requests
    /// and responses go through unchanged).
    pub fn protocol(&self) -> AgentClient {
        self.client.clone()
    }
}

impl Agents for GrpcAgents {
    type Agent = GrpcAgent;

    async fn connect(&self, target: String, open: Opener, token: &str) -> Result<GrpcAgent> {
        let auth = BearerAuth::new(token)
            .ok_or_else(|| Error::Internal { message: format!("{target}: no agent token"), source: None })?;
        let client = super::connect_unix_opened(move || open(), target.clone(), auth).await.map_err(|e| {
            Error::Unavailable(format!("the agent at {target} is unreachable: {}", crate::error::chain(&e)))
        })?;
        Ok(GrpcAgent { client })
    }
}

impl BotAgent for GrpcAgent {
    async fn version(&self) -> Result<pb::VersionResponse> {
        Ok(self.client.clone().version(pb::VersionRequest {}).await.map_err(super::to_error)?.into_inner())
    }

    async fn mcp_session(&self, open: pb::McpOpen) -> Result<McpChannel> {
        let (tx, rx) = mpsc::channel::<In>(64);
        let first = pb::McpSessionRequest { frame: Some(In::Open(open)) };
        let requests = tokio_stream::once(first)
            .chain(ReceiverStream::new(rx).map(|frame| pb::McpSessionRequest { frame: Some(frame) }));
        let responses = self.client.clone().mcp_session(requests).await.map_err(super::to_error)?.into_inner();
        let from_agent = responses.map(|r| r.map(|m| m.frame).map_err(super::to_error));
        Ok(McpChannel { to_agent: tx, from_agent: Box::pin(from_agent) })
    }
}
