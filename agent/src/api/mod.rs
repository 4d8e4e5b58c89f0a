//! The gRPC surface of the agent. Handlers here are thin: they call the per-area functions in this
//! module's children, which call domain code in `fs/` and `process/`. [`Error`] becomes a
//! [`tonic::Status`] only here.

mod convert;
mod exec;
mod files;
mod mcp;
mod meta;
mod procs;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use berth_proto::agent::v1 as pb;
use pb::container_service_server::ContainerService;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::state::Agent;

pub use meta::{CAPABILITIES, PROTOCOL_VERSION};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::Internal { message, source } => {
                let id = uuid::Uuid::new_v4();
                let cause = source.as_ref().map(ToString::to_string).unwrap_or_default();
                tracing::error!(error.id = %id, error = %message, cause = %cause, "internal error");
                Status::internal(format!("{message} (internal error {id}; see the agent log)"))
            }
        }
    }
}

/// The working directory for a child: the client's path inside the root, or the data directory (or `/`
/// when it does not exist).
fn resolve_cwd(agent: &Agent, cwd: &str) -> Result<(PathBuf, String)> {
    let rel = if cwd.is_empty() {
        let data = agent.root.data_dir();
        if agent.root.host_path(data).is_dir() { data.clone() } else { agent.root.resolve("/")? }
    } else {
        agent.root.resolve(cwd)?
    };
    Ok((agent.root.host_path(&rel), rel.display()))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn stream<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<Result<T, Status>>) -> Response<BoxStream<T>> {
    Response::new(Box::pin(ReceiverStream::new(rx)))
}

/// The `ContainerService` implementation.
#[derive(Debug, Clone)]
pub struct Service {
    agent: Arc<Agent>,
}

impl Service {
    pub fn new(agent: Arc<Agent>) -> Self {
        Service { agent }
    }
}

type Res<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ContainerService for Service {
    async fn read_file(&self, r: Request<pb::ReadFileRequest>) -> Res<pb::ReadFileResponse> {
        Ok(Response::new(files::read_file(self.agent.clone(), r.into_inner()).await?))
    }

    async fn write_file(&self, r: Request<pb::WriteFileRequest>) -> Res<pb::WriteFileResponse> {
        Ok(Response::new(files::write_file(self.agent.clone(), r.into_inner()).await?))
    }

    async fn list_dir(&self, r: Request<pb::ListDirRequest>) -> Res<pb::ListDirResponse> {
        Ok(Response::new(files::list_dir(self.agent.clone(), r.into_inner()).await?))
    }

    async fn stat(&self, r: Request<pb::StatRequest>) -> Res<pb::StatResponse> {
        Ok(Response::new(files::stat(self.agent.clone(), r.into_inner()).await?))
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Res<pb::MkdirResponse> {
        Ok(Response::new(files::mkdir(self.agent.clone(), r.into_inner()).await?))
    }

    async fn rename(&self, r: Request<pb::RenameRequest>) -> Res<pb::RenameResponse> {
        Ok(Response::new(files::rename(self.agent.clone(), r.into_inner()).await?))
    }

    async fn delete(&self, r: Request<pb::DeleteRequest>) -> Res<pb::DeleteResponse> {
        Ok(Response::new(files::delete(self.agent.clone(), r.into_inner()).await?))
    }

    async fn chmod(&self, r: Request<pb::ChmodRequest>) -> Res<pb::ChmodResponse> {
        Ok(Response::new(files::chmod(self.agent.clone(), r.into_inner()).await?))
    }

    async fn chown(&self, r: Request<pb::ChownRequest>) -> Res<pb::ChownResponse> {
        Ok(Response::new(files::chown(self.agent.clone(), r.into_inner()).await?))
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(&self, r: Request<pb::DownloadRequest>) -> Res<Self::DownloadStream> {
        Ok(stream(files::download(self.agent.clone(), r.into_inner()).await?))
    }

    async fn upload(&self, r: Request<Streaming<pb::UploadRequest>>) -> Res<pb::UploadResponse> {
        Ok(Response::new(files::upload(self.agent.clone(), r.into_inner()).await?))
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        Ok(stream(files::watch(self.agent.clone(), r.into_inner()).await?))
    }

    type ExecStream = BoxStream<pb::ExecResponse>;

    async fn exec(&self, r: Request<Streaming<pb::ExecRequest>>) -> Res<Self::ExecStream> {
        Ok(stream(exec::open(self.agent.clone(), r.into_inner()).await?))
    }

    type McpSessionStream = BoxStream<pb::McpSessionResponse>;

    async fn mcp_session(&self, r: Request<Streaming<pb::McpSessionRequest>>) -> Res<Self::McpSessionStream> {
        Ok(stream(mcp::open(self.agent.clone(), r.into_inner()).await?))
    }

    async fn list_sessions(&self, _r: Request<pb::ListSessionsRequest>) -> Res<pb::ListSessionsResponse> {
        Ok(Response::new(meta::list_sessions(&self.agent)))
    }

    async fn kill_session(&self, r: Request<pb::KillSessionRequest>) -> Res<pb::KillSessionResponse> {
        Ok(Response::new(meta::kill_session(&self.agent, r.get_ref())?))
    }

    async fn start_process(&self, r: Request<pb::StartProcessRequest>) -> Res<pb::ProcessInfo> {
        Ok(Response::new(procs::start(&self.agent, r.into_inner())?))
    }

    async fn list_processes(&self, _r: Request<pb::ListProcessesRequest>) -> Res<pb::ListProcessesResponse> {
        Ok(Response::new(procs::list(&self.agent)))
    }

    async fn get_process(&self, r: Request<pb::GetProcessRequest>) -> Res<pb::ProcessInfo> {
        Ok(Response::new(procs::get(&self.agent, &r.get_ref().id)?))
    }

    type ReadOutputStream = BoxStream<pb::OutputChunk>;

    async fn read_output(&self, r: Request<pb::ReadOutputRequest>) -> Res<Self::ReadOutputStream> {
        Ok(stream(procs::read_output(&self.agent, r.into_inner())?))
    }

    async fn write_stdin(&self, r: Request<pb::WriteStdinRequest>) -> Res<pb::WriteStdinResponse> {
        Ok(Response::new(procs::write_stdin(&self.agent, r.into_inner()).await?))
    }

    async fn signal_process(&self, r: Request<pb::SignalProcessRequest>) -> Res<pb::SignalProcessResponse> {
        Ok(Response::new(procs::signal(&self.agent, r.get_ref())?))
    }

    async fn resize_process(&self, r: Request<pb::ResizeProcessRequest>) -> Res<pb::ResizeProcessResponse> {
        Ok(Response::new(procs::resize(&self.agent, r.get_ref())?))
    }

    async fn remove_process(&self, r: Request<pb::RemoveProcessRequest>) -> Res<pb::RemoveProcessResponse> {
        Ok(Response::new(procs::remove(&self.agent, &r.get_ref().id)?))
    }

    async fn version(&self, _r: Request<pb::VersionRequest>) -> Res<pb::VersionResponse> {
        Ok(Response::new(meta::version(&self.agent)))
    }

    async fn stats(&self, _r: Request<pb::StatsRequest>) -> Res<pb::StatsResponse> {
        Ok(Response::new(meta::stats(&self.agent)))
    }
}
