//! `DataService`: thin handlers over [`BotManager`]'s snapshots, export/import and operations. The only
//! logic here is plumbing gRPC streams to the blocking archive code (see `archive::pipe`). A call for
//! another node's bot is sent to that node (`forward.rs`); operations are read from the shared database
//! by any node.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::controlplane::v1 as pb;
use bytes::Bytes;
use pb::data_service_server::DataService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::forward::{self, Forwarder};
use super::{Scope, convert};
use crate::archive::Compression;
use crate::archive::pipe::{ChannelReader, ChannelWriter};
use crate::bots::BotManager;
use crate::bots::Platform;

pub struct Data<P: Platform> {
    m: Arc<BotManager<P>>,
    forward: Forwarder,
}

impl<P: Platform> Data<P> {
    pub fn new(m: Arc<BotManager<P>>, forward: Forwarder) -> Self {
        Data { m, forward }
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl<P: Platform> DataService for Data<P> {
    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> Res<pb::CreateSnapshotResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().bot).await? {
            return forward::unary(&peer, r).await;
        }
        let r = r.into_inner();
        let (s, op) = self.m.create_snapshot(&r.bot, Some(r.name)).await?;
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(convert::snapshot(s)), operation_id: op }))
    }

    async fn list_snapshots(&self, r: Request<pb::ListSnapshotsRequest>) -> Res<pb::ListSnapshotsResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().bot).await? {
            return forward::unary(&peer, r).await;
        }
        let snaps = self.m.list_snapshots(&r.get_ref().bot).await?;
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots: snaps.into_iter().map(convert::snapshot).collect() }))
    }

    async fn delete_snapshot(&self, r: Request<pb::DeleteSnapshotRequest>) -> Res<pb::DeleteSnapshotResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().bot).await? {
            return forward::unary(&peer, r).await;
        }
        self.m.delete_snapshot(&r.get_ref().bot, &r.get_ref().name).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn rollback(&self, r: Request<pb::RollbackRequest>) -> Res<pb::RollbackResponse> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().bot).await? {
            return forward::unary(&peer, r).await;
        }
        let (b, op) = self.m.rollback(&r.get_ref().bot, &r.get_ref().snapshot).await?;
        Ok(Response::new(pb::RollbackResponse { bot: Some(convert::bot(b, None)), operation_id: op }))
    }

    type ExportDataStream = Pin<Box<dyn Stream<Item = Result<pb::ExportDataChunk, Status>> + Send>>;

    async fn export_data(&self, r: Request<pb::ExportDataRequest>) -> Res<Self::ExportDataStream> {
        Scope::of(&r).allow(&r.get_ref().bot)?;
        if let Some(peer) = self.forward.peer(&r, &r.get_ref().bot).await? {
            return forward::server_streaming(&peer, r).await;
        }
        let r = r.into_inner();
        let compression = match pb::Compression::try_from(r.compression) {
            Ok(pb::Compression::Zstd) => Compression::Zstd,
            Ok(pb::Compression::Gzip) => Compression::Gzip,
            Ok(pb::Compression::None) => Compression::None,
            Err(_) => return Err(Status::invalid_argument(format!("unknown compression {}", r.compression))),
        };
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::ExportDataChunk, Status>>(8);
        let (bytes_tx, mut bytes_rx) = mpsc::channel::<Bytes>(8);
        let m = self.m.clone();
        tokio::spawn(async move {
            let started = out_tx.clone();
            let export = m.export_data(&r.bot, compression, ChannelWriter::new(bytes_tx), move |id| {
                let _ = started.try_send(Ok(pb::ExportDataChunk {
                    data: Vec::new(),
                    operation_id: id.to_string(),
                    summary: None,
                }));
            });
            tokio::pin!(export);
            let mut open = true;
            let result = loop {
                tokio::select! {
                    r = &mut export => break r,
                    b = bytes_rx.recv(), if open => match b {
                        Some(b) => {
                            let chunk = pb::ExportDataChunk { data: b.to_vec(), operation_id: String::new(), summary: None };
                            if out_tx.send(Ok(chunk)).await.is_err() {
                                // The client went away: closing makes the writer fail and the export end.
                                open = false;
                                bytes_rx.close();
                            }
                        }
                        None => open = false,
                    },
                }
            };
            while let Some(b) = bytes_rx.recv().await {
                if out_tx
                    .send(Ok(pb::ExportDataChunk { data: b.to_vec(), operation_id: String::new(), summary: None }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let last = match result {
                Ok(s) => {
                    let summary = pb::ExportSummary { entries: s.entries, bytes: s.bytes, skipped: s.skipped };
                    Ok(pb::ExportDataChunk { data: Vec::new(), operation_id: String::new(), summary: Some(summary) })
                }
                Err(e) => Err(e.into()),
            };
            let _ = out_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }

    async fn import_data(&self, mut r: Request<Streaming<pb::ImportDataChunk>>) -> Res<pb::ImportDataResponse> {
        let scope = Scope::of(&r);
        let first =
            r.get_mut().message().await?.ok_or_else(|| {
                Status::invalid_argument("the import stream was empty: the first message names the bot")
            })?;
        if first.bot.is_empty() {
            return Err(Status::invalid_argument("the first import message must name the bot"));
        }
        scope.allow(&first.bot)?;
        if let Some(peer) = self.forward.peer(&r, &first.bot).await? {
            let (whole, broken) = forward::split_after(r, first);
            return forward::client_streaming(&peer, whole, broken).await;
        }
        let mut stream = r.into_inner();
        let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(8);
        if !first.data.is_empty() {
            let _ = tx.send(Ok(Bytes::from(first.data))).await;
        }
        let pump = tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(c)) => Ok(Bytes::from(c.data)),
                    Ok(None) => return,
                    Err(s) => Err(format!("the client's stream failed: {}", s.message())),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut op_id = String::new();
        let mode = crate::bots::ImportMode { replace: first.replace, unverified: first.unverified };
        let result = self.m.import_data(&first.bot, ChannelReader::new(rx), mode, |id| op_id = id.to_string()).await;
        pump.abort();
        let done = result?;
        Ok(Response::new(pb::ImportDataResponse {
            operation_id: op_id,
            entries: done.summary.entries,
            bytes: done.summary.bytes,
            verified: done.summary.verified,
            undo_snapshot: done.undo_snapshot.unwrap_or_default(),
        }))
    }

    async fn list_operations(&self, r: Request<pb::ListOperationsRequest>) -> Res<pb::ListOperationsResponse> {
        let scope = Scope::of(&r);
        if !r.get_ref().bot.is_empty() {
            scope.allow(&r.get_ref().bot)?;
        }
        let ops = self.m.operations(&r.get_ref().bot, r.get_ref().limit).await?;
        let operations = ops.into_iter().filter(|o| scope.sees(&o.bot)).map(convert::operation).collect();
        Ok(Response::new(pb::ListOperationsResponse { operations }))
    }

    async fn get_operation(&self, r: Request<pb::GetOperationRequest>) -> Res<pb::Operation> {
        let op = self.m.operation(&r.get_ref().id).await?;
        Scope::of(&r).allow(&op.bot)?;
        Ok(Response::new(convert::operation(op)))
    }
}
