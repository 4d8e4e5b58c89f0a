//! The agent protocol served by berthd and routed to the bot named in the `berth-bot` metadata: to its
//! agent when the bot is this node's, else to the node that owns it (`forward.rs`), which does the same.
//! Requests and responses pass through unchanged, streams flow through with backpressure (nothing is
//! buffered whole), and cancellation propagates: when a client goes away, its call to the agent is
//! dropped, which the agent treats as a disconnect (an exec's process group is killed, an upload is
//! discarded).

use std::sync::Arc;

use berth_proto::agent::v1 as pb;
use pb::container_service_server::ContainerService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::BOT_HEADER;
use super::forward::{self, BoxStream, Forwarder, Hop};
use super::streams::{guard, guard_open, split, until_broken, upstream};
use crate::agent_client::{AgentClient, GrpcAgents};
use crate::bots::BotManager;
use crate::bots::Platform;

pub struct Proxy<P: Platform> {
    m: Arc<BotManager<P>>,
    forward: Forwarder,
}

impl<P: Platform> Proxy<P> {
    pub fn new(m: Arc<BotManager<P>>, forward: Forwarder) -> Self {
        Proxy { m, forward }
    }
}

/// Where a call goes: this node's agent of the bot, or the node that owns the bot.
enum Route {
    Here(AgentClient),
    There(Hop),
}

impl<P: Platform<Agents = GrpcAgents>> Proxy<P> {
    async fn route<T>(&self, r: &Request<T>) -> Result<Route, Status> {
        let bot =
            r.metadata().get(BOT_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::invalid_argument(format!("name the bot in the `{BOT_HEADER}` request metadata"))
            })?;
        super::Scope::of(r).allow(bot)?;
        if let Some(peer) = self.forward.peer(r, bot).await? {
            return Ok(Route::There(peer));
        }
        Ok(Route::Here(self.m.agent(bot).await?.protocol()))
    }
}

type Res<T> = Result<Response<T>, Status>;

fn down<T: Send + 'static>(r: Response<Streaming<T>>) -> Response<BoxStream<T>> {
    Response::new(Box::pin(r.into_inner()))
}

/// A unary method: the agent's answer here, or the owner's.
macro_rules! unary {
    ($self:ident, $r:ident, $method:ident) => {
        match $self.route(&$r).await? {
            Route::Here(mut c) => c.$method($r.into_inner()).await,
            Route::There(peer) => forward::unary(&peer, $r).await,
        }
    };
}

/// A method with a response stream.
macro_rules! server_streaming {
    ($self:ident, $r:ident, $method:ident) => {
        match $self.route(&$r).await? {
            Route::Here(mut c) => Ok(down(c.$method($r.into_inner()).await?)),
            Route::There(peer) => forward::server_streaming(&peer, $r).await,
        }
    };
}

#[tonic::async_trait]
impl<P: Platform<Agents = GrpcAgents>> ContainerService for Proxy<P> {
    async fn read_file(&self, r: Request<pb::ReadFileRequest>) -> Res<pb::ReadFileResponse> {
        unary!(self, r, read_file)
    }

    async fn write_file(&self, r: Request<pb::WriteFileRequest>) -> Res<pb::WriteFileResponse> {
        unary!(self, r, write_file)
    }

    async fn list_dir(&self, r: Request<pb::ListDirRequest>) -> Res<pb::ListDirResponse> {
        unary!(self, r, list_dir)
    }

    async fn stat(&self, r: Request<pb::StatRequest>) -> Res<pb::StatResponse> {
        unary!(self, r, stat)
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Res<pb::MkdirResponse> {
        unary!(self, r, mkdir)
    }

    async fn rename(&self, r: Request<pb::RenameRequest>) -> Res<pb::RenameResponse> {
        unary!(self, r, rename)
    }

    async fn delete(&self, r: Request<pb::DeleteRequest>) -> Res<pb::DeleteResponse> {
        unary!(self, r, delete)
    }

    async fn chmod(&self, r: Request<pb::ChmodRequest>) -> Res<pb::ChmodResponse> {
        unary!(self, r, chmod)
    }

    async fn chown(&self, r: Request<pb::ChownRequest>) -> Res<pb::ChownResponse> {
        unary!(self, r, chown)
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(&self, r: Request<pb::DownloadRequest>) -> Res<Self::DownloadStream> {
        server_streaming!(self, r, download)
    }

    async fn upload(&self, r: Request<Streaming<pb::UploadRequest>>) -> Res<pb::UploadResponse> {
        match self.route(&r).await? {
            Route::Here(mut c) => {
                let (up, broken) = upstream(r.into_inner());
                guard(c.upload(up), broken).await
            }
            Route::There(hop) => {
                let (r, broken) = split(r);
                forward::client_streaming(&hop, r, broken).await
            }
        }
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        server_streaming!(self, r, watch)
    }

    type ExecStream = BoxStream<pb::ExecResponse>;

    async fn exec(&self, r: Request<Streaming<pb::ExecRequest>>) -> Res<Self::ExecStream> {
        match self.route(&r).await? {
            Route::Here(mut c) => {
                let (up, broken) = upstream(r.into_inner());
                let (response, broken) = guard_open(c.exec(up), broken).await?;
                Ok(down(response).map(|s| until_broken(s, broken)))
            }
            Route::There(hop) => {
                let (r, broken) = split(r);
                forward::streaming(&hop, r, broken).await
            }
        }
    }

    type McpSessionStream = BoxStream<pb::McpSessionResponse>;

    async fn mcp_session(&self, r: Request<Streaming<pb::McpSessionRequest>>) -> Res<Self::McpSessionStream> {
        let mut c = match self.route(&r).await? {
            Route::Here(c) => c,
            Route::There(hop) => {
                let (r, broken) = split(r);
                return forward::streaming(&hop, r, broken).await;
            }
        };
        // Open (in the metrics, on the bot's node) until the response stream is dropped.
        let guard = crate::metrics::metrics().mcp_session();
        let (up, broken) = upstream(r.into_inner());
        let (response, broken) = guard_open(c.mcp_session(up), broken).await?;
        let stream = response.into_inner().map(move |item| {
            let _open = &guard;
            item
        });
        Ok(Response::new(until_broken(Box::pin(stream), broken)))
    }

    async fn list_sessions(&self, r: Request<pb::ListSessionsRequest>) -> Res<pb::ListSessionsResponse> {
        unary!(self, r, list_sessions)
    }

    async fn kill_session(&self, r: Request<pb::KillSessionRequest>) -> Res<pb::KillSessionResponse> {
        unary!(self, r, kill_session)
    }

    async fn start_process(&self, r: Request<pb::StartProcessRequest>) -> Res<pb::ProcessInfo> {
        unary!(self, r, start_process)
    }

    async fn list_processes(&self, r: Request<pb::ListProcessesRequest>) -> Res<pb::ListProcessesResponse> {
        unary!(self, r, list_processes)
    }

    async fn get_process(&self, r: Request<pb::GetProcessRequest>) -> Res<pb::ProcessInfo> {
        unary!(self, r, get_process)
    }

    type ReadOutputStream = BoxStream<pb::OutputChunk>;

    async fn read_output(&self, r: Request<pb::ReadOutputRequest>) -> Res<Self::ReadOutputStream> {
        server_streaming!(self, r, read_output)
    }

    async fn write_stdin(&self, r: Request<pb::WriteStdinRequest>) -> Res<pb::WriteStdinResponse> {
        unary!(self, r, write_stdin)
    }

    async fn signal_process(&self, r: Request<pb::SignalProcessRequest>) -> Res<pb::SignalProcessResponse> {
        unary!(self, r, signal_process)
    }

    async fn resize_process(&self, r: Request<pb::ResizeProcessRequest>) -> Res<pb::ResizeProcessResponse> {
        unary!(self, r, resize_process)
    }

    async fn remove_process(&self, r: Request<pb::RemoveProcessRequest>) -> Res<pb::RemoveProcessResponse> {
        unary!(self, r, remove_process)
    }

    async fn version(&self, r: Request<pb::VersionRequest>) -> Res<pb::VersionResponse> {
        unary!(self, r, version)
    }

    async fn stats(&self, r: Request<pb::StatsRequest>) -> Res<pb::StatsResponse> {
        unary!(self, r, stats)
    }
}
