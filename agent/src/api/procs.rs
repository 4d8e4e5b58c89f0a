//! Detached processes over the protocol: thin handlers over `process::detached` (checks of what the
//! client sent, and the output stream of `ReadOutput`).

use berth_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::exec::{pty_size, spawn_request};
use crate::error::{Error, Result};
use crate::process::detached::{DEFAULT_JOURNAL_BYTES, MAX_JOURNAL_BYTES, StartRequest};
use crate::process::journal::ReadError;
use crate::process::pump::CHUNK_BYTES;
use crate::state::Agent;

/// Longest client request id.
const MAX_REQUEST_ID: usize = 128;

pub fn start(agent: &Agent, r: pb::StartProcessRequest) -> Result<pb::ProcessInfo> {
    let id = &r.request_id;
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "request_id {id:?} is invalid: choose 1-{MAX_REQUEST_ID} printable ASCII characters, the same for every retry"
        )));
    }
    let start = r.start.ok_or_else(|| Error::InvalidArgument("`start` (what to run) is missing".into()))?;
    let journal_bytes = match r.journal_bytes {
        0 => DEFAULT_JOURNAL_BYTES,
        n if n > MAX_JOURNAL_BYTES => {
            return Err(Error::InvalidArgument(format!(
                "journal_bytes {n} is more than the {MAX_JOURNAL_BYTES} bytes a stream may keep"
            )));
        }
        n => n,
    };
    let req = StartRequest {
        request_id: r.request_id.clone(),
        tag: start.tag.clone(),
        spawn: spawn_request(agent, &start)?,
        timeout_ms: start.timeout_ms,
        stdin: start.stdin,
        close_stdin: start.close_stdin,
        journal_bytes,
    };
    Ok(agent.detached.start(req)?.info())
}

pub fn list(agent: &Agent) -> pb::ListProcessesResponse {
    pb::ListProcessesResponse { processes: agent.detached.list().iter().map(|p| p.info()).collect() }
}

pub fn get(agent: &Agent, id: &str) -> Result<pb::ProcessInfo> {
    Ok(agent.detached.get(id)?.info())
}

pub async fn write_stdin(agent: &Agent, r: pb::WriteStdinRequest) -> Result<pb::WriteStdinResponse> {
    let p = agent.detached.get(&r.id)?;
    Ok(pb::WriteStdinResponse { offset: p.write_stdin(r.offset, &r.data, r.close).await? })
}

pub fn signal(agent: &Agent, r: &pb::SignalProcessRequest) -> Result<pb::SignalProcessResponse> {
    agent.detached.signal(&r.id, r.signal)?;
    Ok(pb::SignalProcessResponse {})
}

pub fn resize(agent: &Agent, r: &pb::ResizeProcessRequest) -> Result<pb::ResizeProcessResponse> {
    let size = r.size.as_ref().ok_or_else(|| Error::InvalidArgument("`size` is missing".into()))?;
    let (rows, cols) = pty_size(size)?;
    agent.detached.get(&r.id)?.resize(rows, cols)?;
    Ok(pb::ResizeProcessResponse {})
}

pub fn remove(agent: &Agent, id: &str) -> Result<pb::RemoveProcessResponse> {
    agent.detached.remove(id)?;
    Ok(pb::RemoveProcessResponse {})
}

fn read_error(e: ReadError) -> Error {
    match e {
        ReadError::Dropped { .. } | ReadError::Beyond { .. } => Error::OutOfRange(e.to_string()),
        ReadError::Io(e) => Error::Internal { message: "reading a journal failed".into(), source: Some(e) },
    }
}

/// The output of one stream from an offset: what is kept, then (with `follow`) what comes, then the exit.
/// A first offset outside what is kept is refused here, before any chunk.
pub fn read_output(agent: &Agent, r: pb::ReadOutputRequest) -> Result<mpsc::Receiver<Result<pb::OutputChunk, Status>>> {
    let p = agent.detached.get(&r.id)?;
    let stream = r.stream;
    let index = usize::try_from(stream).map_err(|_| Error::InvalidArgument(format!("no output stream {stream}")))?;
    let Some(journal) = p.journal(index) else {
        return Err(Error::InvalidArgument(format!("no output stream {stream}: 0 is stdout, 1 is stderr")));
    };
    // Checks the offset now, so a refusal is the call's status.
    journal.read_at(r.offset, 0).map_err(read_error)?;
    let (tx, rx) = mpsc::channel(8);
    let (offset, follow) = (r.offset, r.follow);
    tokio::spawn(async move {
        let Some(journal) = p.journal(index) else { return };
        let mut changes = journal.subscribe();
        let mut offset = offset;
        loop {
            let data = match journal.read_at(offset, CHUNK_BYTES) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(read_error(e)))).await;
                    return;
                }
            };
            if !data.is_empty() {
                let n = data.len() as u64;
                if tx.send(Ok(pb::OutputChunk { stream, offset, data, exited: None })).await.is_err() {
                    return;
                }
                offset += n;
                continue;
            }
            if !follow {
                return;
            }
            let span = *changes.borrow_and_update();
            if span.finished && offset >= span.end {
                p.ended().await;
                let _ = tx.send(Ok(pb::OutputChunk { stream, offset, data: Vec::new(), exited: p.exit() })).await;
                return;
            }
            if offset < span.end {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}
