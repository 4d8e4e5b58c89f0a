//! Streaming transfers through the real agent: 1 GiB up and down with matching sha256, ranges, and
//! uploads that abort, mismatch or disconnect without leaving anything behind.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use berth_proto::agent::v1 as pb;
use common::*;
use pb::upload_request::Frame as Up;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;

fn up(f: Up) -> pb::UploadRequest {
    pb::UploadRequest { frame: Some(f) }
}

fn open(path: &str) -> Up {
    Up::Open(pb::UploadOpen { path: path.into(), mode: 0, create_parents: true, no_overwrite: false })
}

/// Deterministic pseudo-random bytes (xorshift), so a GiB needs no disk on the client side.
struct Gen(u64);
impl Gen {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

fn dir_names(path: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(path).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[tokio::test]
async fn one_gib_up_and_down_with_matching_sha256() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let total = 1024 * MIB;
    let (tx, rx) = mpsc::channel(4);
    let mut client = c.clone();
    let call = tokio::spawn(async move { client.upload(ReceiverStream::new(rx)).await });
    tx.send(up(open("big/gib.bin"))).await.unwrap();
    let mut rng = Gen(0x9e3779b97f4a7c15);
    let mut hasher = Sha256::new();
    let mut sent = 0;
    while sent < total {
        let mut buf = vec![0u8; MIB];
        rng.fill(&mut buf);
        hasher.update(&buf);
        sent += buf.len();
        tx.send(up(Up::Data(buf))).await.unwrap();
    }
    let want = hex::encode(hasher.finalize());
    tx.send(up(Up::Commit(pb::UploadCommit { expected_sha256: want.clone() }))).await.unwrap();
    drop(tx);
    let r = call.await.unwrap().unwrap().into_inner();
    assert_eq!(r.bytes_written, total as u64);
    assert_eq!(r.sha256, want);
    assert_eq!(std::fs::metadata(agent.host("/data/big/gib.bin")).unwrap().len(), total as u64);

    let mut stream = c
        .download(pb::DownloadRequest { path: "big/gib.bin".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut hasher = Sha256::new();
    let (mut got, mut last_sha, mut first_size) = (0u64, String::new(), None);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, got);
        first_size.get_or_insert(chunk.file_size_bytes);
        got += chunk.data.len() as u64;
        hasher.update(&chunk.data);
        if chunk.eof {
            last_sha = chunk.sha256;
        }
    }
    assert_eq!(first_size, Some(total as u64));
    assert_eq!(got, total as u64);
    assert_eq!(hex::encode(hasher.finalize()), want);
    assert_eq!(last_sha, want);
}

#[tokio::test]
async fn download_ranges_and_errors() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1_000_000).collect();
    std::fs::write(agent.host("/data/f"), &data).unwrap();
    let req = pb::DownloadRequest { path: "f".into(), offset: 1000, length: 300_000, chunk_size_bytes: 65536 };
    let mut stream = c.download(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    let mut sha = String::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= 65536);
        got.extend(chunk.data);
        if chunk.eof {
            sha = chunk.sha256;
        }
    }
    assert_eq!(got, &data[1000..301_000]);
    assert_eq!(sha, hex::encode(Sha256::digest(&got)));
    let err = c.download(pb::DownloadRequest { path: "nope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    std::fs::create_dir(agent.host("/data/d")).unwrap();
    let err = c.download(pb::DownloadRequest { path: "d".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

async fn upload_then(
    c: &mut berth_control_plane::agent_client::AgentClient,
    frames: Vec<Up>,
    close: bool,
) -> tonic::Status {
    let (tx, rx) = mpsc::channel(8);
    let mut client = c.clone();
    let call = tokio::spawn(async move { client.upload(ReceiverStream::new(rx)).await });
    for f in frames {
        tx.send(up(f)).await.unwrap();
    }
    if close {
        drop(tx);
        call.await.unwrap().unwrap_err()
    } else {
        // Give the agent the frames, then abandon the call entirely (client disconnect).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        call.abort();
        drop(tx);
        tonic::Status::cancelled("client went away")
    }
}

#[tokio::test]
async fn failed_uploads_leave_nothing_behind() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    std::fs::write(agent.host("/data/keep"), b"original").unwrap();
    let data = || Up::Data(vec![1u8; 3 * MIB]);
    let abort = Up::Abort(pb::UploadAbort {});
    let s = upload_then(&mut c, vec![open("keep"), data(), abort], true).await;
    assert_eq!(s.code(), tonic::Code::Aborted);
    let bad = Up::Commit(pb::UploadCommit { expected_sha256: "00".repeat(32) });
    let s = upload_then(&mut c, vec![open("keep"), data(), bad], true).await;
    assert_eq!(s.code(), tonic::Code::Aborted);
    assert!(s.message().contains("does not match"), "{}", s.message());
    let s = upload_then(&mut c, vec![open("keep"), data()], true).await;
    assert_eq!(s.code(), tonic::Code::Aborted, "a stream without commit must not land");
    upload_then(&mut c, vec![open("keep"), data()], false).await;
    let s = upload_then(&mut c, vec![data()], true).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let clean = || {
        dir_names(&agent.host("/data")) == ["keep"] && std::fs::read(agent.host("/data/keep")).unwrap() == b"original"
    };
    assert!(eventually(std::time::Duration::from_secs(5), clean).await, "left: {:?}", dir_names(&agent.host("/data")));
}
