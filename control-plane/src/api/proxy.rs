//! The agent protocol served by berthd and routed to the bot named in the `berth-bot` metadata. Requests
//! and responses pass through unchanged, streams flow through with backpressure (nothing is buffered
//! whole), and cancellation propagates: when a client goes away, its call to the agent is dropped, which
//! the agent treats as a disconnect (an exec's process group is killed, an upload is discarded).

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::agent::v1 as pb;
use pb::container_service_server::ContainerService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::BOT_HEADER;
use crate::agent_client::{AgentClient, GrpcAgents};
use crate::bots::BotManager;
use crate::bots::Platform;

pub struct Proxy<P: Platform> {
    m: Arc<BotManager<P>>,
}

impl<P: Platform> Proxy<P> {
    pub fn new(m: Arc<BotManager<P>>) -> Self {
        Proxy { m }
    }
}

impl<P: Platform<Agents = GrpcAgents>> Proxy<P> {
    async fn agent<T>(&self, r: &Request<T>) -> Result<AgentClient, Status> {
        let bot =
            r.metadata().get(BOT_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::invalid_argument(format!("name the bot in the `{BOT_HEADER}` request metadata"))
            })?;
        super::Scope::of(r).allow(bot)?;
        Ok(self.m.agent(bot).await?.protocol())
    }
}

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The client's request stream as the agent call's request stream: it ends where the client's ends or
/// fails (a failed client stream is a disconnect, seen by the agent when this call is dropped).
fn upstream<T: Send + 'static>(s: Streaming<T>) -> impl Stream<Item = T> + Send + 'static {
    s.map_while(Result::ok)
}

fn down<T: Send + 'static>(r: Response<Streaming<T>>) -> Response<BoxStream<T>> {
    Response::new(Box::pin(r.into_inner()))
}

#[tonic::async_trait]
impl<P: Platform<Agents = GrpcAgents>> ContainerService for Proxy<P> {
    async fn read_file(&self, r: Request<pb::ReadFileRequest>) -> Res<pb::ReadFileResponse> {
        self.agent(&r).await?.read_file(r.into_inner()).await
    }

    async fn write_file(&self, r: Request<pb::WriteFileRequest>) -> Res<pb::WriteFileResponse> {
        self.agent(&r).await?.write_file(r.into_inner()).await
    }

    async fn list_dir(&self, r: Request<pb::ListDirRequest>) -> Res<pb::ListDirResponse> {
        self.agent(&r).await?.list_dir(r.into_inner()).await
    }

    async fn stat(&self, r: Request<pb::StatRequest>) -> Res<pb::StatResponse> {
        self.agent(&r).await?.stat(r.into_inner()).await
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Res<pb::MkdirResponse> {
        self.agent(&r).await?.mkdir(r.into_inner()).await
    }

    async fn rename(&self, r: Request<pb::RenameRequest>) -> Res<pb::RenameResponse> {
        self.agent(&r).await?.rename(r.into_inner()).await
    }

    async fn delete(&self, r: Request<pb::DeleteRequest>) -> Res<pb::DeleteResponse> {
        self.agent(&r).await?.delete(r.into_inner()).await
    }

    async fn chmod(&self, r: Request<pb::ChmodRequest>) -> Res<pb::ChmodResponse> {
        self.agent(&r).await?.chmod(r.into_inner()).await
    }

    async fn chown(&self, r: Request<pb::ChownRequest>) -> Res<pb::ChownResponse> {
        self.agent(&r).await?.chown(r.into_inner()).await
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(&self, r: Request<pb::DownloadRequest>) -> Res<Self::DownloadStream> {
        Ok(down(self.agent(&r).await?.download(r.into_inner()).await?))
    }

    async fn upload(&self, r: Request<Streaming<pb::UploadRequest>>) -> Res<pb::UploadResponse> {
        let mut c = self.agent(&r).await?;
        c.upload(upstream(r.into_inner())).await
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        Ok(down(self.agent(&r).await?.watch(r.into_inner()).await?))
    }

    type ExecStream = BoxStream<pb::ExecResponse>;

    async fn exec(&self, r: Request<Streaming<pb::ExecRequest>>) -> Res<Self::ExecStream> {
        let mut c = self.agent(&r).await?;
        Ok(down(c.exec(upstream(r.into_inner())).await?))
    }

    type McpSessionStream = BoxStream<pb::McpSessionResponse>;

    async fn mcp_session(&self, r: Request<Streaming<pb::McpSessionRequest>>) -> Res<Self::McpSessionStream> {
        let mut c = self.agent(&r).await?;
        // Open (in the metrics) until the response stream is dropped.
        let guard = crate::metrics::metrics().mcp_session();
        let stream = c.mcp_session(upstream(r.into_inner())).await?.into_inner();
        Ok(Response::new(Box::pin(stream.map(move |item| {
            let _open = &guard;
            item
        }))))
    }

    async fn list_sessions(&self, r: Request<pb::ListSessionsRequest>) -> Res<pb::ListSessionsResponse> {
        self.agent(&r).await?.list_sessions(r.into_inner()).await
    }

    async fn kill_session(&self, r: Request<pb::KillSessionRequest>) -> Res<pb::KillSessionResponse> {
        self.agent(&r).await?.kill_session(r.into_inner()).await
    }

    async fn start_process(&self, r: Request<pb::StartProcessRequest>) -> Res<pb::ProcessInfo> {
        self.agent(&r).await?.start_process(r.into_inner()).await
    }

    async fn list_processes(&self, r: Request<pb::ListProcessesRequest>) -> Res<pb::ListProcessesResponse> {
        self.agent(&r).await?.list_processes(r.into_inner()).await
    }

    async fn get_process(&self, r: Request<pb::GetProcessRequest>) -> Res<pb::ProcessInfo> {
        self.agent(&r).await?.get_process(r.into_inner()).await
    }

    type ReadOutputStream = BoxStream<pb::OutputChunk>;

    async fn read_output(&self, r: Request<pb::ReadOutputRequest>) -> Res<Self::ReadOutputStream> {
        Ok(down(self.agent(&r).await?.read_output(r.into_inner()).await?))
    }

    async fn write_stdin(&self, r: Request<pb::WriteStdinRequest>) -> Res<pb::WriteStdinResponse> {
        self.agent(&r).await?.write_stdin(r.into_inner()).await
    }

    async fn signal_process(&self, r: Request<pb::SignalProcessRequest>) -> Res<pb::SignalProcessResponse> {
        self.agent(&r).await?.signal_process(r.into_inner()).await
    }

    async fn resize_process(&self, r: Request<pb::ResizeProcessRequest>) -> Res<pb::ResizeProcessResponse> {
        self.agent(&r).await?.resize_process(r.into_inner()).await
    }

    async fn remove_process(&self, r: Request<pb::RemoveProcessRequest>) -> Res<pb::RemoveProcessResponse> {
        self.agent(&r).await?.remove_process(r.into_inner()).await
    }

    async fn version(&self, r: Request<pb::VersionRequest>) -> Res<pb::VersionResponse> {
        self.agent(&r).await?.version(r.into_inner()).await
    }

    async fn stats(&self, r: Request<pb::StatsRequest>) -> Res<pb::StatsResponse> {
        self.agent(&r).await?.stats(r.into_inner()).await
    }
}
