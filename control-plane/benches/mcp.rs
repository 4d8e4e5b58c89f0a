//! MCP benchmarks (not tests): one tool call's round trip (`tools/call` of the conformance fixture's
//! `test_simple_text`) through every path into a real bot (the `full` image) — the stdio bridge
//! (`berth mcp BOT SERVER`), gRPC (`McpService.McpSession`), Streamable HTTP in a session and stateless —
//! each against the same server run directly on the host in the same run. Writes `target/bench/mcp.{json,md}`.
//! Run through `scripts/bench.sh`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, BearerAuth};
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use report::Report;
use support::berthd::TestBerthd;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TOKEN: &str = "bench-token-0123456789abcdef";
const CALLS: usize = 300;
const WARMUP: usize = 30;
const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn call(i: usize) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"test_simple_text","arguments":{{}}}}}}"#,
        i + 1
    )
}

fn check(reply: &str, i: usize) {
    assert!(reply.contains(&format!(r#""id":{}"#, i + 1)) && reply.contains("simple text response"), "{reply}");
}

/// Times CALLS calls over a line-based stdio pair (the server itself, or `berth mcp`).
fn over_stdio(cmd: &mut Command) -> Vec<Duration> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut send = |m: &str, answer: bool| -> String {
        stdin.write_all(format!("{m}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        line.clear();
        if answer {
            stdout.read_line(&mut line).unwrap();
        }
        line.clone()
    };
    send(INIT, true);
    send(INITIALIZED, false);
    let mut times = Vec::new();
    for i in 0..CALLS + WARMUP {
        let t = Instant::now();
        let r = send(&call(i), true);
        let took = t.elapsed();
        check(&r, i);
        if i >= WARMUP {
            times.push(took);
        }
    }
    drop(stdin);
    let _ = child.wait();
    times
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = here.join("tests/fixtures/conformance_server.py");
    let b = TestBerthd::start_mcp(&format!("{TOKEN}\n"), &[]);
    b.cli(&["bot", "create", "bench", "--image", "berth/full:latest"]);
    b.import_paths("bench", &[(fixture.clone(), "data/bench/server.py")]).await;
    b.cli(&["mcp-server", "add", "bench", "fixture", "--", "python3", "/data/bench/server.py"]);
    let mut report = Report::new();

    // Floor: the same server on the host, spoken to over its own stdin/stdout.
    let direct = tokio::task::spawn_blocking(move || over_stdio(Command::new("python3").arg(fixture))).await.unwrap();
    let floor = Some(("the server directly on the host (stdio)", direct.as_slice()));

    // The stdio bridge: what an MCP client that launches a command gets.
    let sock = b.socket.clone();
    let bridged = tokio::task::spawn_blocking(move || {
        over_stdio(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .arg("--addr")
                .arg(&sock)
                .args(["--token", TOKEN, "mcp", "bench", "fixture", "--quiet"]),
        )
    })
    .await
    .unwrap();
    report.row("MCP tools/call via `berth mcp BOT SERVER` (stdio bridge)", &bridged, floor);

    // gRPC: McpService.McpSession, raw frames.
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut mcp = pb::mcp_service_client::McpServiceClient::with_interceptor(ch, BearerAuth::new(TOKEN).unwrap());
    let (tx, rx) = mpsc::channel(4);
    let connect = pb::McpConnect {
        bot: "bench".into(),
        target: Some(pb::mcp_connect::Target::Server("fixture".into())),
        ..Default::default()
    };
    tx.send(pb::McpClientFrame { frame: Some(pb::mcp_client_frame::Frame::Connect(connect)) }).await.unwrap();
    let mut resp = mcp.mcp_session(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let msg = |m: String| pb::McpClientFrame { frame: Some(pb::mcp_client_frame::Frame::Message(m.into_bytes())) };
    async fn reply(resp: &mut tonic::Streaming<apb::McpSessionResponse>) -> String {
        loop {
            match resp.message().await.unwrap().and_then(|m| m.frame) {
                Some(apb::mcp_session_response::Frame::Message(m)) => return String::from_utf8(m).unwrap(),
                Some(apb::mcp_session_response::Frame::Started(_)) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    tx.send(msg(INIT.into())).await.unwrap();
    reply(&mut resp).await;
    tx.send(msg(INITIALIZED.into())).await.unwrap();
    let mut grpc = Vec::new();
    for i in 0..CALLS + WARMUP {
        let t = Instant::now();
        tx.send(msg(call(i))).await.unwrap();
        let r = reply(&mut resp).await;
        let took = t.elapsed();
        check(&r, i);
        if i >= WARMUP {
            grpc.push(took);
        }
    }
    drop(tx);
    report.row("MCP tools/call via gRPC McpService.McpSession", &grpc, floor);

    // Streamable HTTP: a legacy session (JSON replies), then stateless requests (2026-07-28 headers).
    let http = reqwest::Client::new();
    let url = format!("http://{}/bots/bench/mcp/fixture", b.mcp_addr());
    let post = |body: String, session: Option<String>, modern: bool| {
        let mut r = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        if modern {
            r = r
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "test_simple_text");
        }
        r.send()
    };
    let init = post(INIT.into(), None, false).await.unwrap();
    let sid = init.headers()["mcp-session-id"].to_str().unwrap().to_string();
    init.text().await.unwrap();
    post(INITIALIZED.into(), Some(sid.clone()), false).await.unwrap();
    for (name, modern) in [
        ("MCP tools/call via Streamable HTTP (session)", false),
        ("MCP tools/call via Streamable HTTP (stateless, 2026-07-28)", true),
    ] {
        let mut times = Vec::new();
        for i in 0..CALLS + WARMUP {
            let t = Instant::now();
            let r = post(call(i), (!modern).then(|| sid.clone()), modern).await.unwrap().text().await.unwrap();
            let took = t.elapsed();
            check(&r, i);
            if i >= WARMUP {
                times.push(took);
            }
        }
        report.row(name, &times, floor);
    }
    report.write("mcp");
}
