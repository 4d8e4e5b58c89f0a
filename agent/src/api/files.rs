//! File RPCs: decode the request, run the blocking file-system work off the async threads, encode.

use std::sync::Arc;

use berth_proto::agent::v1 as pb;
use pb::upload_request::Frame as UploadFrame;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert::{file_info, watch_event};
use crate::error::{Error, Result};
use crate::fs::{download, info, list, ops, read, watch, write};
use crate::state::Agent;

/// Runs blocking file-system work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("file task failed: {e}")))?
}

pub async fn read_file(agent: Arc<Agent>, r: pb::ReadFileRequest) -> Result<pb::ReadFileResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let mode = match r.mode {
        Some(pb::read_file_request::Mode::Bytes(b)) => read::ReadMode::Bytes { offset: b.offset, length: b.length },
        Some(pb::read_file_request::Mode::Lines(l)) => {
            read::ReadMode::Lines { start_line: l.start_line, max_lines: l.max_lines }
        }
        None => read::ReadMode::Lines { start_line: 0, max_lines: 0 },
    };
    let o = blocking(move || read::read(&agent.root, &rel, mode, r.max_bytes)).await?;
    Ok(pb::ReadFileResponse {
        content: o.content,
        binary: o.binary,
        total_lines: o.total_lines,
        lines_returned: o.lines_returned,
        truncated: o.truncated,
        file_size_bytes: o.file_size_bytes,
    })
}

pub async fn write_file(agent: Arc<Agent>, r: pb::WriteFileRequest) -> Result<pb::WriteFileResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let opts = write::WriteOptions { mode: r.mode, create_parents: r.create_parents, no_overwrite: r.no_overwrite };
    let (n, sha) = blocking(move || write::write_file(&agent.root, &rel, &r.content, opts)).await?;
    Ok(pb::WriteFileResponse { bytes_written: n, sha256: sha })
}

pub async fn list_dir(agent: Arc<Agent>, r: pb::ListDirRequest) -> Result<pb::ListDirResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let opts = list::ListOptions {
        recursive: r.recursive,
        max_depth: r.max_depth,
        page_size: r.page_size,
        page_token: r.page_token,
        max_entries: r.max_entries,
    };
    let page = blocking(move || list::list(&agent.root, &rel, &opts)).await?;
    Ok(pb::ListDirResponse {
        entries: page.entries.into_iter().map(file_info).collect(),
        next_page_token: page.next_page_token,
        total_entries: page.total_entries,
    })
}

pub async fn stat(agent: Arc<Agent>, r: pb::StatRequest) -> Result<pb::StatResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let mut i = blocking(move || info::stat(&agent.root, &rel, r.follow_symlinks)).await?;
    i.path = r.path;
    Ok(pb::StatResponse { info: Some(file_info(i)) })
}

pub async fn mkdir(agent: Arc<Agent>, r: pb::MkdirRequest) -> Result<pb::MkdirResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let created = blocking(move || ops::mkdir(&agent.root, &rel, r.parents, r.mode)).await?;
    Ok(pb::MkdirResponse { created })
}

pub async fn rename(agent: Arc<Agent>, r: pb::RenameRequest) -> Result<pb::RenameResponse> {
    let from = agent.root.resolve(&r.from_path)?;
    let to = agent.root.resolve(&r.to_path)?;
    blocking(move || ops::rename(&agent.root, &from, &to, r.no_overwrite, r.create_parents)).await?;
    Ok(pb::RenameResponse {})
}

pub async fn delete(agent: Arc<Agent>, r: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
    let rel = agent.root.resolve(&r.path)?;
    let existed = blocking(move || ops::delete(&agent.root, &rel, r.recursive)).await?;
    Ok(pb::DeleteResponse { existed })
}

pub async fn chmod(agent: Arc<Agent>, r: pb::ChmodRequest) -> Result<pb::ChmodResponse> {
    let rel = agent.root.resolve(&r.path)?;
    blocking(move || ops::chmod(&agent.root, &rel, r.mode)).await?;
    Ok(pb::ChmodResponse {})
}

pub async fn chown(agent: Arc<Agent>, r: pb::ChownRequest) -> Result<pb::ChownResponse> {
    let rel = agent.root.resolve(&r.path)?;
    if r.uid.is_none() && r.gid.is_none() {
        return Err(Error::InvalidArgument("chown needs a uid, a gid or both".into()));
    }
    blocking(move || ops::chown(&agent.root, &rel, r.uid, r.gid, r.follow_symlinks)).await?;
    Ok(pb::ChownResponse {})
}

pub type DownloadStream = mpsc::Receiver<Result<pb::DownloadChunk, Status>>;

pub async fn download(agent: Arc<Agent>, r: pb::DownloadRequest) -> Result<DownloadStream> {
    let rel = agent.root.resolve(&r.path)?;
    let root = agent.root.clone();
    let (file, size) = blocking(move || read::open_for_read(&root, &rel)).await?;
    let (tx, rx) = mpsc::channel(8);
    let shown = r.path.clone();
    tokio::task::spawn_blocking(move || {
        download::pump(&file, &shown, size, r.offset, r.length, r.chunk_size_bytes, |c| {
            let msg = c.map_err(Status::from).map(|c| pb::DownloadChunk {
                offset: c.offset,
                data: c.data,
                file_size_bytes: c.file_size_bytes,
                eof: c.eof,
                sha256: c.sha256,
            });
            tx.blocking_send(msg).is_ok()
        });
    });
    Ok(rx)
}

pub async fn upload(agent: Arc<Agent>, mut inbound: Streaming<pb::UploadRequest>) -> Result<pb::UploadResponse> {
    let open = match inbound.message().await {
        Ok(Some(pb::UploadRequest { frame: Some(UploadFrame::Open(o)) })) => o,
        Ok(Some(_)) => return Err(Error::InvalidArgument("the first upload frame must be `open`".into())),
        Ok(None) => return Err(Error::InvalidArgument("upload stream closed before the `open` frame".into())),
        Err(s) => return Err(Error::Aborted(format!("upload stream failed: {}", s.message()))),
    };
    let rel = agent.root.resolve(&open.path)?;
    let opts =
        write::WriteOptions { mode: open.mode, create_parents: open.create_parents, no_overwrite: open.no_overwrite };
    let root = agent.root.clone();
    let file = blocking(move || write::AtomicFile::create(&root, &rel, opts)).await?;
    // One blocking writer per upload, fed through a small queue: receiving the next chunk overlaps with
    // writing and hashing this one. The writer owns the file; if it ends without a commit (abort, error,
    // disconnect), dropping the file removes the temporary, so nothing lands uncommitted.
    let (tx, mut rx) = mpsc::channel::<WriterMsg>(4);
    let shown = open.path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                WriterMsg::Data(d) => file.write(&d)?,
                WriterMsg::Commit(sha) => return file.commit(Some(&sha)),
            }
        }
        Err(Error::Aborted(format!("upload to `{shown}` ended without `commit`; nothing was written")))
    });
    let outcome = loop {
        let frame = match inbound.message().await {
            Ok(Some(pb::UploadRequest { frame: Some(f) })) => f,
            Ok(Some(_)) => break Err(Error::InvalidArgument("empty upload frame".into())),
            Ok(None) => break Ok(()),
            Err(s) => break Err(Error::Aborted(format!("upload to `{}` failed: {}", open.path, s.message()))),
        };
        match frame {
            // A failed send means the writer stopped on an error, which it returns below.
            UploadFrame::Data(data) => {
                if tx.send(WriterMsg::Data(data)).await.is_err() {
                    break Ok(());
                }
            }
            UploadFrame::Commit(c) => {
                let _ = tx.send(WriterMsg::Commit(c.expected_sha256)).await;
                break Ok(());
            }
            UploadFrame::Abort(_) => {
                break Err(Error::Aborted(format!(
                    "upload to `{}` aborted by the client; nothing was written",
                    open.path
                )));
            }
            UploadFrame::Open(_) => {
                break Err(Error::InvalidArgument("`open` may only be the first upload frame".into()));
            }
        }
    };
    drop(tx);
    let written = writer.await.map_err(|e| Error::internal(format!("upload writer failed: {e}")))?;
    outcome?;
    let (n, sha) = written?;
    Ok(pb::UploadResponse { bytes_written: n, sha256: sha })
}

/// What the upload's blocking writer is told.
enum WriterMsg {
    Data(Vec<u8>),
    Commit(String),
}

pub type WatchStream = mpsc::Receiver<Result<pb::WatchEvent, Status>>;

pub async fn watch(agent: Arc<Agent>, r: pb::WatchRequest) -> Result<WatchStream> {
    let rel = agent.root.resolve(&r.path)?;
    let (tx, mut rx) = mpsc::channel(1024);
    watch::start(agent.root.clone(), rel, r.recursive, tx)?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if out_tx.send(ev.map(watch_event).map_err(Status::from)).await.is_err() {
                return;
            }
        }
    });
    Ok(out_rx)
}
