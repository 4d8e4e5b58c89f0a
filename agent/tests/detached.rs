//! Detached processes through the real agent: output read back byte for byte across dropped readers,
//! starts and stdin writes that are safe to retry, bounded journals that say where to read from, and
//! records that outlive the agent.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::time::Duration;

use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use common::*;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

fn start_req(request_id: &str, shell: &str) -> pb::StartProcessRequest {
    pb::StartProcessRequest {
        request_id: request_id.into(),
        start: Some(pb::ExecStart { shell: shell.into(), ..Default::default() }),
        journal_bytes: 0,
    }
}

async fn wait_ended(c: &mut AgentClient, id: &str) -> pb::ProcessInfo {
    for _ in 0..600 {
        let p = c.get_process(pb::GetProcessRequest { id: id.into() }).await.unwrap().into_inner();
        if p.state != pb::ProcessState::Running as i32 {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {id} did not end within 30 s");
}

/// Reads `stream` from `offset` on a fresh connection, stopping (dropping the call, as a killed client
/// would) after `chunks` chunks; returns the bytes, the next offset, and whether the stream ended.
async fn read_some(
    agent: &TestAgent,
    id: &str,
    stream: pb::OutputStream,
    offset: u64,
    chunks: usize,
) -> (Vec<u8>, u64, bool) {
    let mut c = agent.client().await;
    let req = pb::ReadOutputRequest { id: id.into(), stream: stream as i32, offset, follow: true };
    let mut s = c.read_output(req).await.unwrap().into_inner();
    let (mut got, mut next) = (Vec::new(), offset);
    for _ in 0..chunks {
        match s.next().await {
            Some(Ok(ch)) => {
                assert_eq!(ch.offset, next, "every chunk starts where the last one ended");
                if ch.exited.is_some() {
                    return (got, next, true);
                }
                next += ch.data.len() as u64;
                got.extend(ch.data);
            }
            Some(Err(e)) => panic!("read failed: {e}"),
            None => return (got, next, true),
        }
    }
    (got, next, false)
}

#[tokio::test]
async fn output_read_across_dropped_readers_is_the_processs_output_byte_for_byte() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // Two files of random bytes, then both written at once: stdout and stderr interleave.
    let shell = "head -c 12000000 /dev/urandom > a; head -c 9000000 /dev/urandom > b; cat a & cat b >&2; wait";
    let p = c.start_process(start_req("interleaved", shell)).await.unwrap().into_inner();
    assert_eq!(p.state, pb::ProcessState::Running as i32);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_stop = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        1 + (rng % 8) as usize
    };
    for (stream, file) in [(pb::OutputStream::Stdout, "a"), (pb::OutputStream::Stderr, "b")] {
        let (mut all, mut offset, mut readers) = (Vec::new(), 0u64, 0);
        loop {
            let (got, next, ended) = read_some(&agent, &p.id, stream, offset, next_stop()).await;
            all.extend(got);
            offset = next;
            readers += 1;
            if ended {
                break;
            }
        }
        assert!(readers >= 20, "{stream:?}: only {readers} readers; the test wants at least 20 resumptions");
        let want = std::fs::read(agent.host(&format!("/data/{file}"))).unwrap();
        assert_eq!(all.len(), want.len(), "{stream:?}: length");
        assert_eq!(Sha256::digest(&all), Sha256::digest(&want), "{stream:?}: content");
    }
    let done = wait_ended(&mut c, &p.id).await;
    assert_eq!(done.exit.unwrap().exit_code, Some(0));
    assert_eq!(done.stdout.unwrap().end, 12_000_000);
    assert_eq!(done.stderr.unwrap().end, 9_000_000);
}

#[tokio::test]
async fn a_start_sent_ten_times_runs_once_and_a_retried_stdin_write_is_applied_once() {
    let agent = TestAgent::start().await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(agent.client().await);
    }
    // Each start appends a line to a file: a second run would show.
    let shell = "echo ran >> runs; exec cat";
    let starts = clients.into_iter().map(|mut c| {
        tokio::spawn(async move { c.start_process(start_req("once", shell)).await.unwrap().into_inner().id })
    });
    let ids: Vec<String> = futures_join(starts).await;
    assert!(ids.iter().all(|i| *i == ids[0]), "one process for one request id: {ids:?}");
    // After a reconnect, the same.
    let mut c = agent.client().await;
    let again = c.start_process(start_req("once", shell)).await.unwrap().into_inner();
    assert_eq!(again.id, ids[0]);
    let list = c.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert_eq!(list.processes.len(), 1);
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(agent.host("/data/runs"))
            .is_ok_and(|s| s == "ran\n"))
        .await,
        "the command ran once"
    );

    let id = ids[0].clone();
    let write = |offset: u64, data: &[u8], close: bool| pb::WriteStdinRequest {
        id: id.clone(),
        offset,
        data: data.to_vec(),
        close,
    };
    assert_eq!(c.write_stdin(write(0, b"abc", false)).await.unwrap().into_inner().offset, 3);
    assert_eq!(c.write_stdin(write(0, b"abc", false)).await.unwrap().into_inner().offset, 3, "a retried write");
    assert_eq!(c.write_stdin(write(1, b"bcdef", false)).await.unwrap().into_inner().offset, 6, "an overlapping retry");
    let gap = c.write_stdin(write(9, b"x", false)).await.unwrap_err();
    assert_eq!(gap.code(), tonic::Code::FailedPrecondition);
    assert!(gap.message().contains("resend from offset 6"), "{}", gap.message());
    assert_eq!(c.write_stdin(write(6, b"\n", true)).await.unwrap().into_inner().offset, 7);
    let (out, _, ended) = read_some(&agent, &id, pb::OutputStream::Stdout, 0, 100).await;
    assert!(ended);
    assert_eq!(out, b"abcdef\n", "cat saw each byte once");
}

async fn futures_join(handles: impl Iterator<Item = tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_full_journal_drops_the_oldest_output_and_a_read_from_there_is_out_of_range() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let mut req = start_req("flood", "head -c 10485760 /dev/zero");
    req.journal_bytes = 2 << 20;
    let p = c.start_process(req).await.unwrap().into_inner();
    let done = wait_ended(&mut c, &p.id).await;
    let span = done.stdout.unwrap();
    assert_eq!(span.end, 10 << 20);
    assert!(span.end - span.first <= 3 << 20 && span.first > 0, "{span:?}");
    let from_zero = pb::ReadOutputRequest { id: p.id.clone(), stream: 0, offset: 0, follow: false };
    let e = c.read_output(from_zero).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert!(e.message().contains(&format!("read from {}", span.first)), "{}", e.message());
    let (rest, end, ended) = read_some(&agent, &p.id, pb::OutputStream::Stdout, span.first, usize::MAX).await;
    assert!(ended);
    assert_eq!(end, 10 << 20);
    assert_eq!(rest.len() as u64, span.end - span.first);
    assert!(rest.iter().all(|b| *b == 0));
    // The agent's memory does not hold the output.
    let stats = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert!(stats.rss_bytes < 64 << 20, "agent RSS {} after 10 MiB of output", stats.rss_bytes);
}

#[tokio::test]
async fn records_and_journals_outlive_the_agent_and_a_running_process_is_reported_lost() {
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let mut first = TestAgent::start_with(None, &["--state-dir", &state_arg]).await;
    let mut c = first.client().await;
    let p = c.start_process(start_req("survivor", "echo before; exec sleep 1000")).await.unwrap().into_inner();
    let finished = c.start_process(start_req("done", "echo finished; exit 3")).await.unwrap().into_inner();
    wait_ended(&mut c, &finished.id).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_dir(state.path().join(&p.id).join("stdout")).is_ok_and(|mut d| d.next().is_some())
        })
        .await
    );
    first.terminate();
    // A restart of the bot's task ends every process in it.
    let _ = std::process::Command::new("kill").args(["-9", &p.pid.to_string()]).status();
    let second = TestAgent::start_with(None, &["--state-dir", &state_arg]).await;
    let mut c = second.client().await;
    let list = c.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner().processes;
    assert_eq!(list.len(), 2);
    let lost = list.iter().find(|x| x.id == p.id).unwrap();
    assert_eq!(lost.state, pb::ProcessState::Lost as i32);
    assert!(lost.exit.as_ref().unwrap().message.contains("restart"), "{lost:?}");
    let done = list.iter().find(|x| x.id == finished.id).unwrap();
    assert_eq!(done.exit.as_ref().unwrap().exit_code, Some(3));
    let (out, _, ended) = read_some(&second, &p.id, pb::OutputStream::Stdout, 0, 10).await;
    assert!(ended);
    assert_eq!(out, b"before\n");
    // The same request id still names it; a finished process can be removed, then it is gone.
    assert_eq!(c.start_process(start_req("survivor", "true")).await.unwrap().into_inner().id, p.id);
    c.remove_process(pb::RemoveProcessRequest { id: p.id.clone() }).await.unwrap();
    let e = c.get_process(pb::GetProcessRequest { id: p.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(!state.path().join(&p.id).exists());
}

#[tokio::test]
async fn an_agent_that_cannot_write_its_state_directory_refuses_detached_starts_and_serves_the_rest() {
    // uid 65534 cannot create `var/lib/berth-agent` under the root (owned by root).
    let agent = TestAgent::start_as(Some(65534)).await;
    let mut c = agent.client().await;
    let e = c.start_process(start_req("x", "true")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("detached processes are unavailable") && e.message().contains("state directory"),
        "{}",
        e.message()
    );
    let r = run(&mut c, argv(&["true"])).await.unwrap();
    assert_eq!(r.code(), Some(0), "ordinary execs still run");
}

#[tokio::test]
async fn the_bots_detached_output_is_bounded_in_total_and_removing_finished_ones_makes_room() {
    let agent = TestAgent::start_with(None, &["--max-journal-bytes-total", "4194304"]).await;
    let mut c = agent.client().await;
    let small = |id: &str| {
        let mut r = start_req(id, "true");
        r.journal_bytes = 1 << 20;
        r
    };
    let first = c.start_process(small("a")).await.unwrap().into_inner();
    c.start_process(small("b")).await.unwrap();
    let e = c.start_process(small("c")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("may keep 4194304 bytes") && e.message().contains("berth ps rm"), "{}", e.message());
    wait_ended(&mut c, &first.id).await;
    c.remove_process(pb::RemoveProcessRequest { id: first.id }).await.unwrap();
    c.start_process(small("c")).await.unwrap();
}

#[tokio::test]
async fn a_gibibyte_into_the_default_journal_keeps_the_agents_memory_flat() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let before = c.stats(pb::StatsRequest {}).await.unwrap().into_inner().rss_bytes;
    let p = c.start_process(start_req("gib", "head -c 1073741824 /dev/zero")).await.unwrap().into_inner();
    let done = wait_ended(&mut c, &p.id).await;
    let after = c.stats(pb::StatsRequest {}).await.unwrap().into_inner().rss_bytes;
    eprintln!("agent RSS: {} KiB before, {} KiB after 1 GiB of output", before >> 10, after >> 10);
    assert!(after < before + (16 << 20), "RSS grew from {before} to {after} bytes");
    let span = done.stdout.unwrap();
    assert_eq!(span.end, 1 << 30);
    assert!(span.end - span.first <= 65 << 20 && span.end - span.first >= 63 << 20, "{span:?}");
    let e = c.read_output(pb::ReadOutputRequest { id: p.id.clone(), stream: 0, offset: 0, follow: true }).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::OutOfRange);
    let (rest, end, ended) = read_some(&agent, &p.id, pb::OutputStream::Stdout, span.first, usize::MAX).await;
    assert!(ended && end == 1 << 30 && rest.len() as u64 == span.end - span.first);
    // The dropped segments are gone from the disk.
    let kept: u64 = std::fs::read_dir(agent.host(&format!("/var/lib/berth-agent/processes/{}/stdout", p.id)))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(kept, span.end - span.first);
}
