//! MCP stdio sessions through the real agent with real servers: byte-exact relay of 16 MiB messages,
//! stderr floods that never stall the server, MCP shutdown escalation, disconnects, limits, kill.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use common::*;
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Responses = tonic::Streaming<pb::McpSessionResponse>;

fn python() -> String {
    dep("venv/bin/python").display().to_string()
}

fn open(command: &str, args: &[&str]) -> pb::McpOpen {
    pb::McpOpen { command: command.into(), args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

async fn start(
    c: &mut berth_control_plane::agent_client::AgentClient,
    o: pb::McpOpen,
) -> (mpsc::Sender<pb::McpSessionRequest>, Responses, u32) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::McpSessionRequest { frame: Some(In::Open(o)) }).await.unwrap();
    let mut resp = c.mcp_session(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let pid = match resp.message().await.unwrap().unwrap().frame {
        Some(Out::Started(s)) => s.pid,
        other => panic!("expected started, got {other:?}"),
    };
    (tx, resp, pid)
}

async fn send(tx: &mpsc::Sender<pb::McpSessionRequest>, msg: impl Into<Vec<u8>>) {
    tx.send(pb::McpSessionRequest { frame: Some(In::Message(msg.into())) }).await.unwrap();
}

/// Next message frame (skipping stderr), or the exit frame.
async fn next(resp: &mut Responses) -> Result<Vec<u8>, pb::Exited> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), resp.message())
            .await
            .expect("no MCP frame within 60 s")
            .expect("MCP stream failed")
            .expect("MCP stream ended without an exit frame");
        match m.frame {
            Some(Out::Message(b)) => return Ok(b),
            Some(Out::Exited(e)) => return Err(e),
            _ => {}
        }
    }
}

async fn exit_of(resp: &mut Responses) -> pb::Exited {
    loop {
        if let Err(e) = next(resp).await {
            return e;
        }
    }
}

#[tokio::test]
async fn relays_a_16_mib_message_byte_for_byte_through_a_real_server() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let (tx, mut resp, _) = start(&mut c, open(&python(), &[&fixture("mcp_fixture.py")])).await;
    send(&tx, r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#).await;
    let init = String::from_utf8(next(&mut resp).await.unwrap()).unwrap();
    assert!(init.contains(r#""id":1"#) && init.contains("protocolVersion"), "{init}");
    send(&tx, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
    // Over 16 MiB of text, with raw U+2028 (which a naive splitter would break the line on).
    let unit = format!("{}\u{2028}", "x".repeat(1023));
    let text = unit.repeat(16 << 10);
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{text}"}}}}}}"#
    );
    assert!(call.len() > 16 << 20);
    send(&tx, call.into_bytes()).await;
    let reply = next(&mut resp).await.unwrap();
    assert!(reply.len() > 16 << 20, "reply of {} bytes", reply.len());
    let reply = String::from_utf8(reply).unwrap();
    assert!(reply.contains(r#""id":2"#));
    // Every unit must come back intact (raw, or escaped as \u2028 by the server's JSON encoder).
    let escaped = format!("{}\\u2028", "x".repeat(1023));
    let intact = reply.matches(unit.as_str()).count().max(reply.matches(&escaped).count());
    assert!(intact >= 16 << 10, "only {intact} of {} units came back intact", 16 << 10);
    drop(tx); // stdin EOF: the server exits on its own
    let e = exit_of(&mut resp).await;
    assert_eq!(e.reason, pb::ExitReason::Exited as i32);
    assert_eq!(e.exit_code, Some(0), "{e:?}");
}

#[tokio::test]
async fn stderr_flood_never_stalls_the_server_and_keeps_a_bounded_tail() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let o = open(&python(), &[&fixture("line_echo.py"), "--stderr-bytes", "1048576"]);
    let (tx, mut resp, _) = start(&mut c, o).await;
    for i in 0..8 {
        let msg = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#);
        send(&tx, msg.clone()).await;
        assert_eq!(next(&mut resp).await.unwrap(), msg.as_bytes());
    }
    drop(tx);
    let e = exit_of(&mut resp).await;
    assert_eq!(e.exit_code, Some(0));
    assert!(!e.stderr_tail.is_empty() && e.stderr_tail.len() <= 16 << 10, "tail of {} bytes", e.stderr_tail.len());
    assert!(e.stderr_tail.iter().all(|b| *b == b'e' || *b == b'\n'));
}

#[tokio::test]
async fn forwarded_stderr_arrives_as_frames() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let o = pb::McpOpen { forward_stderr: true, ..open("sh", &["-c", "echo starting >&2; read line; echo \"$line\""]) };
    let (tx, mut resp, _) = start(&mut c, o).await;
    send(&tx, "{}").await;
    let mut stderr = Vec::new();
    let mut got = None;
    while let Some(m) = resp.message().await.unwrap() {
        match m.frame {
            Some(Out::Stderr(b)) => stderr.extend(b),
            Some(Out::Message(b)) => got = Some(b),
            Some(Out::Exited(_)) => break,
            _ => {}
        }
    }
    assert_eq!(stderr, b"starting\n");
    assert_eq!(got.unwrap(), b"{}");
}

#[tokio::test]
async fn a_server_ignoring_eof_and_sigterm_is_killed_after_the_grace_periods() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let o = pb::McpOpen { shutdown_grace_ms: 200, ..open("sh", &["-c", "trap '' TERM; while :; do sleep 0.05; done"]) };
    let (tx, mut resp, pid) = start(&mut c, o).await;
    let t = std::time::Instant::now();
    drop(tx);
    let e = exit_of(&mut resp).await;
    assert_eq!(e.signal, Some(9), "{e:?}");
    assert!(t.elapsed() >= Duration::from_millis(400), "SIGKILL came before both grace periods");
    assert!(!alive(pid));
}

#[tokio::test]
async fn client_disconnect_ends_the_server() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let (tx, resp, pid) = start(&mut c, open("sh", &["-c", "while :; do sleep 0.05; done"])).await;
    assert!(alive(pid));
    drop(resp);
    drop(tx);
    drop(c);
    assert!(eventually(Duration::from_secs(8), || !alive(pid)).await, "server {pid} outlived its client");
}

#[tokio::test]
async fn oversized_and_malformed_messages_end_the_session_with_a_protocol_error() {
    let agent = TestAgent::start_with(None, &["--max-mcp-message-bytes", "1048576"]).await;
    let mut c = agent.client().await;
    let (tx, mut resp, _) = start(&mut c, open(&python(), &[&fixture("line_echo.py")])).await;
    send(&tx, vec![b'x'; 2 << 20]).await;
    let e = exit_of(&mut resp).await;
    assert_eq!(e.reason, pb::ExitReason::ProtocolError as i32, "{e:?}");
    assert!(e.message.contains("exceeds the limit"), "{}", e.message);
    let (tx, mut resp, _) = start(&mut c, open("cat", &[])).await;
    send(&tx, "{\"a\":1}\n{\"b\":2}").await;
    let e = exit_of(&mut resp).await;
    assert_eq!(e.reason, pb::ExitReason::ProtocolError as i32, "{e:?}");
    assert!(e.message.contains("raw newline"), "{}", e.message);
    let (tx, rx) = mpsc::channel(1);
    drop(tx);
    let err = c.mcp_session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::McpSessionRequest { frame: Some(In::Open(open("no-such-mcp-server", &[]))) }).await.unwrap();
    let err = c.mcp_session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn mcp_sessions_are_listed_and_killable() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let o = pb::McpOpen { tag: "tools".into(), ..open("cat", &[]) };
    let (_tx, mut resp, pid) = start(&mut c, o).await;
    let list = c.list_sessions(pb::ListSessionsRequest {}).await.unwrap().into_inner().sessions;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].kind, list[0].pid, list[0].tag.as_str()), (pb::SessionKind::Mcp as i32, pid, "tools"));
    assert_eq!(c.stats(pb::StatsRequest {}).await.unwrap().into_inner().mcp_sessions, 1);
    c.kill_session(pb::KillSessionRequest { session_id: list[0].session_id.clone(), signal: 15 }).await.unwrap();
    let e = exit_of(&mut resp).await;
    assert_eq!(e.reason, pb::ExitReason::Killed as i32);
    assert_eq!(e.signal, Some(15));
}

#[tokio::test]
async fn many_sessions_open_and_close_without_leaking_processes() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    for _ in 0..50 {
        let (tx, mut resp, _) = start(&mut c, open("cat", &[])).await;
        send(&tx, "{}").await;
        assert_eq!(next(&mut resp).await.unwrap(), b"{}");
        drop(tx);
        assert_eq!(exit_of(&mut resp).await.exit_code, Some(0));
    }
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.mcp_sessions, 0);
    assert!(
        eventually(Duration::from_secs(5), || {
            berth_agent::process::reaper::children_of(agent.pid() as i32).is_empty()
        })
        .await
    );
}
