//! A session with another node's bot, for the HTTP front-end: opened with `McpService.McpSession` on
//! the bot's node, whose hub runs it under its own rules (idle reaping, restarts, OOM names), and seen
//! here as the same [`SessionIo`] a local session gives. The caller's scope goes with it narrowed to the
//! one bot (the front-end has checked the caller may act on it), so the owner checks it again and it can
//! never be wider than the caller's.

use std::time::Duration;

use agent_pb::mcp_session_request::Frame as In;
use agent_pb::mcp_session_response::Frame as Out;
use berth_proto::agent::v1 as agent_pb;
use berth_proto::controlplane::v1 as pb;
use pb::mcp_service_client::McpServiceClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

use super::session::SessionIo;
use crate::auth::Scope;
use crate::cluster::{Peer, SCOPE_HEADER};
use crate::error::{Error, Result};

/// How long the owner may take to start the server.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Opens registered server `server` of `bot` on `peer`; `idle_ms` as in [`super::McpHub::open`].
pub(super) async fn open(peer: &Peer, bot: &str, server: &str, idle_ms: u32) -> Result<SessionIo> {
    let unavailable = |e: tonic::Status| {
        let m = format!("bot `{bot}` on node `{}`: {}", peer.node, e.message());
        match e.code() {
            tonic::Code::NotFound => Error::NotFound(m),
            tonic::Code::InvalidArgument => Error::InvalidArgument(m),
            tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied => Error::FailedPrecondition(m),
            tonic::Code::ResourceExhausted => Error::ResourceExhausted(m),
            _ => Error::Unavailable(m),
        }
    };
    let (to_server, rx) = mpsc::channel::<In>(64);
    let connect = pb::McpClientFrame {
        frame: Some(pb::mcp_client_frame::Frame::Connect(pb::McpConnect {
            bot: bot.to_string(),
            target: Some(pb::mcp_connect::Target::Server(server.to_string())),
            forward_stderr: false,
            idle_timeout_ms: idle_ms,
        })),
    };
    let frames = tokio_stream::once(connect).chain(ReceiverStream::new(rx).filter_map(|f| {
        let frame = match f {
            In::Message(m) => pb::mcp_client_frame::Frame::Message(m),
            In::CloseStdin(c) => pb::mcp_client_frame::Frame::CloseStdin(c),
            _ => return None,
        };
        Some(pb::McpClientFrame { frame: Some(frame) })
    }));
    let mut request = tonic::Request::new(frames);
    let scope = Scope::Bots(std::sync::Arc::new([bot.to_string()].into()));
    let md = request.metadata_mut();
    let bearer = MetadataValue::try_from(format!("Bearer {}", peer.credential.secret()))
        .map_err(|_| Error::InvalidArgument("the cluster secret is not valid metadata".into()))?;
    md.insert("authorization", bearer);
    md.insert(
        SCOPE_HEADER,
        MetadataValue::try_from(scope.encode())
            .map_err(|_| Error::InvalidArgument(format!("bot name `{bot}` is not valid metadata")))?,
    );
    let mut client = McpServiceClient::new(peer.channel.clone())
        .max_decoding_message_size(crate::agent_client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::agent_client::MAX_MESSAGE_BYTES);
    let opened = async {
        let mut responses = client.mcp_session(request).await.map_err(unavailable)?.into_inner();
        let first = responses.message().await.map_err(unavailable)?;
        Ok::<_, Error>((responses, first))
    };
    let (mut responses, first) = tokio::time::timeout(START_DEADLINE, opened)
        .await
        .map_err(|_| Error::Unavailable(format!("node `{}` did not start the server within 30 s", peer.node)))??;
    let pid = match first.and_then(|f| f.frame) {
        Some(Out::Started(s)) => s.pid,
        other => {
            return Err(Error::Unavailable(format!(
                "node `{}` answered an MCP session with {other:?} before `started`",
                peer.node
            )));
        }
    };
    let (tx, from_server) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let item = match responses.message().await {
                Ok(Some(agent_pb::McpSessionResponse { frame: Some(f) })) => Ok(f),
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => Err(unavailable_owned(e)),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(SessionIo { to_server, from_server, pid })
}

fn unavailable_owned(e: tonic::Status) -> Error {
    Error::Unavailable(format!("the session's node: {}", e.message()))
}
