//! `McpService`: thin handlers over [`McpHub`]: the registry (in the shared database: any node serves
//! it), and sessions whose frames are relayed between the gRPC streams and [`SessionIo`]. A session with
//! another node's bot is sent to that node whole (`forward.rs`), so its limits and idle rules are the
//! owner's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::v1 as agent_pb;
use berth_proto::controlplane::v1 as pb;
use pb::mcp_service_server::McpService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Scope;
use super::forward::{self, Forwarder};
use crate::bots::Platform;
use crate::mcp::session::{SessionIo, Target};
use crate::mcp::{LaunchSpec, McpHub, McpServer};

/// How long a client may take to send its `connect` frame.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

pub struct Mcp<P: Platform> {
    hub: Arc<McpHub<P>>,
    forward: Forwarder,
}

impl<P: Platform> Mcp<P> {
    pub fn new(hub: Arc<McpHub<P>>, forward: Forwarder) -> Self {
        Mcp { hub, forward }
    }
}

type Res<T> = Result<Response<T>, Status>;

fn to_pb(s: McpServer) -> pb::McpServer {
    pb::McpServer {
        bot: s.bot,
        name: s.name,
        command: s.spec.command,
        args: s.spec.args,
        env: s.spec.env.into_iter().collect(),
        cwd: s.spec.cwd,
        created_at_ms: s.created_at_ms,
    }
}

#[tonic::async_trait]
impl<P: Platform> McpService for Mcp<P> {
    async fn register_mcp_server(&self, r: Request<pb::RegisterMcpServerRequest>) -> Res<pb::McpServer> {
        let scope = Scope::of(&r);
        let r = r.into_inner();
        let s = r.server.ok_or_else(|| Status::invalid_argument("`server` is required"))?;
        scope.allow(&s.bot)?;
        let spec = LaunchSpec { command: s.command, args: s.args, env: s.env.into_iter().collect(), cwd: s.cwd };
        Ok(Response::new(to_pb(self.hub.register(&s.bot, &s.name, spec, r.replace).await?)))
    }

    async fn list_mcp_servers(&self, r: Request<pb::ListMcpServersRequest>) -> Res<pb::ListMcpServersResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        let servers = self.hub.list(&r.get_ref().bot).await?;
        Ok(Response::new(pb::ListMcpServersResponse { servers: servers.into_iter().map(to_pb).collect() }))
    }

    async fn remove_mcp_server(&self, r: Request<pb::RemoveMcpServerRequest>) -> Res<pb::RemoveMcpServerResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        self.hub.remove(&r.get_ref().bot, &r.get_ref().name).await?;
        Ok(Response::new(pb::RemoveMcpServerResponse {}))
    }

    type McpSessionStream = Pin<Box<dyn Stream<Item = Result<agent_pb::McpSessionResponse, Status>> + Send>>;

    async fn mcp_session(&self, mut r: Request<Streaming<pb::McpClientFrame>>) -> Res<Self::McpSessionStream> {
        use pb::mcp_client_frame::Frame;
        let scope = Scope::of(&r);
        let connect = match tokio::time::timeout(CONNECT_DEADLINE, r.get_mut().message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no `connect` frame within 30 s")),
            Ok(Err(s)) => return Err(s),
            Ok(Ok(Some(pb::McpClientFrame { frame: Some(Frame::Connect(c)) }))) => c,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first frame of an MCP session must be `connect`")),
        };
        scope.allow(&connect.bot)?;
        if let Some(peer) = self.forward.peer(&r, &connect.bot).await? {
            let first = pb::McpClientFrame { frame: Some(Frame::Connect(connect)) };
            let (whole, broken) = forward::split_after(r, first);
            return forward::streaming(&peer, whole, broken).await;
        }
        let mut inbound = r.into_inner();
        let target = match connect.target {
            Some(pb::mcp_connect::Target::Server(name)) => Target::Registered(name),
            Some(pb::mcp_connect::Target::Command(o)) => Target::AdHoc(o),
            None => return Err(Status::invalid_argument("`connect` names neither a registered server nor a command")),
        };
        let SessionIo { to_server, from_server, .. } =
            self.hub.open(&connect.bot, target, connect.forward_stderr, connect.idle_timeout_ms).await?;
        // Client → server: frames in order; the end of the request stream half-closes the server's stdin
        // (dropping `to_server`). A broken request stream is a client gone: the response side notices.
        tokio::spawn(async move {
            while let Ok(Some(f)) = inbound.message().await {
                let frame = match f.frame {
                    Some(Frame::Message(m)) => agent_pb::mcp_session_request::Frame::Message(m),
                    Some(Frame::CloseStdin(c)) => agent_pb::mcp_session_request::Frame::CloseStdin(c),
                    Some(Frame::Connect(_)) | None => continue,
                };
                if to_server.send(frame).await.is_err() {
                    return;
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(from_server)
            .map(|item| item.map(|frame| agent_pb::McpSessionResponse { frame: Some(frame) }).map_err(Status::from));
        Ok(Response::new(Box::pin(out)))
    }
}
