//! Writing blobs into containerd's content store (the `Content.Write` stream: WRITE chunks, then COMMIT
//! with the expected digest and the blob's GC labels) and labelling existing blobs.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Containerd;
use crate::runtime::RuntimeError;

/// Bytes per WRITE frame (containerd accepts up to 16 MiB messages).
const CHUNK_BYTES: usize = 1 << 20;

/// Whether the store already holds `digest`.
pub async fn exists(ctd: &Containerd, digest: &str) -> Result<bool, RuntimeError> {
    let mut c = ContentClient::new(ctd.channel.clone());
    let req = ctd.request(InfoRequest { digest: digest.to_string() }, None);
    match ctd.call("stat content", digest, c.info(req)).await {
        Ok(_) => Ok(true),
        Err(RuntimeError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `data` as blob `digest` under `lease`, committing it with `labels`. containerd checks the
/// digest and size on commit.
pub async fn write(
    ctd: &Containerd,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let what = format!("blob {digest}");
    let r#ref = format!("berth-{}-{}", digest.trim_start_matches("sha256:"), uuid::Uuid::new_v4().simple());
    let total = data.len() as i64;
    let mut frames = Vec::new();
    let mut offset = 0usize;
    for chunk in data.chunks(CHUNK_BYTES) {
        frames.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            total,
            expected: digest.to_string(),
            offset: offset as i64,
            data: chunk.to_vec(),
            labels: HashMap::new(),
        });
        offset += chunk.len();
    }
    frames.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total,
        expected: digest.to_string(),
        offset: offset as i64,
        data: Vec::new(),
        labels,
    });
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for f in frames {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut c = ContentClient::new(ctd.channel.clone());
    let req = ctd.request(ReceiverStream::new(rx), Some(lease));
    let mut responses = ctd.call("write content", what.clone(), c.write(req)).await?;
    // One response per frame; the stream ends after the commit. Any error fails the write.
    loop {
        match tokio::time::timeout(ctd.call_timeout, responses.message()).await {
            Err(_) => return Err(RuntimeError::Timeout { op: format!("write {what}"), after: ctd.call_timeout }),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(s)) => return Err(super::classify(format!("write {what}"), what.clone(), s)),
        }
    }
    let _ = feeder.await;
    Ok(())
}

/// Sets `labels` on an existing blob (other labels are kept).
pub async fn label(ctd: &Containerd, digest: &str, labels: HashMap<String, String>) -> Result<(), RuntimeError> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = Info { digest: digest.to_string(), labels, ..Default::default() };
    let req = UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
    let mut c = ContentClient::new(ctd.channel.clone());
    ctd.call("label content", digest, c.update(ctd.request(req, None))).await?;
    Ok(())
}
