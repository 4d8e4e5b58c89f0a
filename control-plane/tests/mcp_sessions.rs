//! MCP sessions through berthd on a real containerd: the per-bot registry, the stdio bridge
//! (`berth mcp BOT SERVER` and `-- CMD`), the gRPC `McpService` session with raw frames, idle reaping,
//! a crash mid-call, restart-before-first-message, and a bridge killed twice in a row leaking nothing.
//! The servers here are shell one-liners in the minimal image: what is under test is the relay and its
//! rules (real MCP servers through the same path: `full_image.rs`, `mcp_http.rs`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::support;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, BearerAuth};
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use pb::mcp_client_frame::Frame;
use support::berthd::TestBerthd;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A line-echo "server": every line it reads comes back.
const ECHO: &str = "while read -r l; do echo \"$l\"; done";

async fn mcp(
    b: &TestBerthd,
) -> pb::mcp_service_client::McpServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerAuth>,
> {
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    pb::mcp_service_client::McpServiceClient::with_interceptor(ch, BearerAuth::none())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Opens a gRPC session; returns the frame sender and the response stream (after `started`).
async fn session(
    b: &TestBerthd,
    connect: pb::McpConnect,
) -> Result<(mpsc::Sender<pb::McpClientFrame>, tonic::Streaming<apb::McpSessionResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::McpClientFrame { frame: Some(Frame::Connect(connect)) }).await.unwrap();
    let mut resp = mcp(b).await.mcp_session(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), resp.message()).await.expect("no `started` within 20 s");
    match first?.and_then(|m| m.frame) {
        Some(apb::mcp_session_response::Frame::Started(_)) => Ok((tx, resp)),
        other => panic!("expected `started`, got {other:?}"),
    }
}

fn msg(m: &str) -> pb::McpClientFrame {
    pb::McpClientFrame { frame: Some(Frame::Message(m.as_bytes().to_vec())) }
}

fn connect(bot: &str, server: &str) -> pb::McpConnect {
    pb::McpConnect {
        bot: bot.into(),
        target: Some(pb::mcp_connect::Target::Server(server.into())),
        ..Default::default()
    }
}

fn adhoc(bot: &str, script: &str) -> pb::McpConnect {
    let open = apb::McpOpen { command: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() };
    pb::McpConnect { bot: bot.into(), target: Some(pb::mcp_connect::Target::Command(open)), ..Default::default() }
}

/// Next message or the exit report.
async fn next(resp: &mut tonic::Streaming<apb::McpSessionResponse>) -> Result<String, apb::Exited> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), resp.message()).await.expect("no frame within 20 s");
        match m.unwrap().and_then(|m| m.frame) {
            Some(apb::mcp_session_response::Frame::Message(b)) => return Ok(String::from_utf8(b).unwrap()),
            Some(apb::mcp_session_response::Frame::Exited(e)) => return Err(e),
            Some(_) => {}
            None => panic!("the stream ended without `exited`"),
        }
    }
}

/// Processes in the bot whose command line contains `marker` (other than the looking shell).
async fn procs(b: &TestBerthd, bot: &str, marker: &str) -> Vec<String> {
    let out = b
        .sh(bot, &format!("m='{marker}'; for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); case \"$c\" in *\"$m\"*) echo \"${{p#/proc/}} $c\";; esac; done"))
        .await;
    out.lines().filter(|l| !l.contains("for p in") && !l.contains("m=")).map(String::from).collect()
}

async fn wait_no_procs(b: &TestBerthd, bot: &str, marker: &str, within: Duration) {
    let t = Instant::now();
    loop {
        let left = procs(b, bot, marker).await;
        if left.is_empty() {
            return;
        }
        assert!(t.elapsed() < within, "still running after {within:?}: {left:?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_named_servers_per_bot_and_checks_what_it_is_given() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "reg"]);
    b.cli(&["bot", "create", "other"]);
    b.cli(&["mcp-server", "add", "reg", "echo", "-e", "GREETING=hi", "--cwd", "/tmp", "--", "sh", "-c", ECHO]);
    let ls: serde_json::Value = serde_json::from_str(&b.cli(&["mcp-server", "ls", "reg", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "echo");
    assert_eq!(ls[0]["command"], "sh");
    assert_eq!(ls[0]["args"][1], ECHO);
    assert_eq!(ls[0]["env"]["GREETING"], "hi");
    assert_eq!(ls[0]["cwd"], "/tmp");
    assert_eq!(b.cli(&["mcp-server", "ls", "other", "--json"]).trim(), "[]");

    let mut c = mcp(&b).await;
    let reg = |bot: &str, name: &str, command: &str, replace| pb::RegisterMcpServerRequest {
        server: Some(pb::McpServer {
            bot: bot.into(),
            name: name.into(),
            command: command.into(),
            ..Default::default()
        }),
        replace,
    };
    let e = c.register_mcp_server(reg("reg", "echo", "cat", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("`echo`"), "{e:?}");
    c.register_mcp_server(reg("reg", "echo", "cat", true)).await.unwrap();
    let e = c.register_mcp_server(reg("reg", "Bad/Name", "cat", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = c.register_mcp_server(reg("reg", "empty", " ", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = c.register_mcp_server(reg("ghost", "x", "cat", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // The replaced server (cat) answers through the stdio bridge.
    let mut child = b.berth(&["mcp", "reg", "echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", b.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n");

    // Removing: gone from the list; a session with it is NOT_FOUND naming it; removing twice is NOT_FOUND.
    b.cli(&["mcp-server", "rm", "reg", "echo"]);
    let e = session(&b, connect("reg", "echo")).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("MCP server `echo` of bot `reg`"), "{e:?}");
    let e =
        c.remove_mcp_server(pb::RemoveMcpServerRequest { bot: "reg".into(), name: "echo".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Kept across a berthd restart; deleted with the bot (a new bot of the same name starts empty).
    b.cli(&["mcp-server", "add", "reg", "keep", "--", "cat"]);
    let mut b = b;
    b.halt(libc::SIGTERM);
    b.spawn();
    assert!(b.cli(&["mcp-server", "ls", "reg"]).contains("keep"));
    b.cli(&["bot", "rm", "reg"]);
    b.cli(&["bot", "create", "reg"]);
    assert!(!b.cli(&["mcp-server", "ls", "reg"]).contains("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sessions_relay_raw_frames_and_report_a_crash_with_its_status_and_stderr() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "s"]);
    // Two sessions with the same server at once: two processes, each answering only its own client.
    b.cli(&["mcp-server", "add", "s", "echo", "--", "sh", "-c", ECHO]);
    let (tx1, mut r1) = session(&b, connect("s", "echo")).await.unwrap();
    let (tx2, mut r2) = session(&b, connect("s", "echo")).await.unwrap();
    for i in 0..20 {
        let (a, z) = (format!("{{\"id\":{i},\"from\":\"one\"}}"), format!("{{\"id\":{i},\"from\":\"two\"}}"));
        tx1.send(msg(&a)).await.unwrap();
        tx2.send(msg(&z)).await.unwrap();
        assert_eq!(next(&mut r1).await.unwrap(), a);
        assert_eq!(next(&mut r2).await.unwrap(), z);
    }
    // The end of the request stream closes the server's stdin: it exits 0 and says so.
    drop(tx1);
    let e = next(&mut r1).await.unwrap_err();
    assert_eq!((e.exit_code, e.reason), (Some(0), apb::ExitReason::Exited as i32), "{e:?}");

    // A server that crashes mid-call: the client gets its exit status and stderr, never a hang.
    let crash = "read -r l; echo \"fatal: cannot handle $l\" >&2; exit 3";
    let (tx, mut r) = session(&b, adhoc("s", crash)).await.unwrap();
    tx.send(msg("{\"id\":7,\"method\":\"tools/call\"}")).await.unwrap();
    let e = next(&mut r).await.unwrap_err();
    assert_eq!(e.exit_code, Some(3), "{e:?}");
    assert!(String::from_utf8_lossy(&e.stderr_tail).contains("fatal: cannot handle {\"id\":7"), "{e:?}");
    assert!(e.message.contains("code 3"), "{e:?}");
    drop(tx2);

    // A command that does not exist: NOT_FOUND from the start, naming it.
    let open = apb::McpOpen { command: "no-such-server".into(), ..Default::default() };
    let e = session(
        &b,
        pb::McpConnect { bot: "s".into(), target: Some(pb::mcp_connect::Target::Command(open)), ..Default::default() },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-server"), "{e:?}");
    // A bot that is not running, and one that does not exist.
    b.cli(&["bot", "stop", "s"]);
    let e = session(&b, connect("s", "echo")).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = session(&b, connect("nobody", "echo")).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_and_their_servers_stopped() {
    let b = TestBerthd::start_with(None, &["--mcp-idle-timeout-ms", "3000"]);
    b.cli(&["bot", "create", "idle"]);
    let (tx, mut r) =
        session(&b, pb::McpConnect { idle_timeout_ms: 1000, ..adhoc("idle", "exec sleep 1001") }).await.unwrap();
    let t = Instant::now();
    let e = next(&mut r).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.reason, apb::ExitReason::Idle as i32, "{e:?}");
    assert!(e.message.contains("idle"), "{e:?}");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // The client's stream still looked open (tx alive): reaping does not depend on it.
    wait_no_procs(&b, "idle", "sleep 1001", Duration::from_secs(10)).await;
    drop(tx);
    // Traffic keeps a session alive past the timeout; a longer request is capped to berthd's setting.
    let (tx, mut r) = session(&b, pb::McpConnect { idle_timeout_ms: 1000, ..adhoc("idle", ECHO) }).await.unwrap();
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(msg(&format!("{{\"n\":{i}}}"))).await.unwrap();
        assert_eq!(next(&mut r).await.unwrap(), format!("{{\"n\":{i}}}"));
    }
    let (_tx, mut r) =
        session(&b, pb::McpConnect { idle_timeout_ms: 60_000, ..adhoc("idle", "exec sleep 1002") }).await.unwrap();
    let t = Instant::now();
    assert_eq!(next(&mut r).await.unwrap_err().reason, apb::ExitReason::Idle as i32);
    assert!(t.elapsed() < Duration::from_secs(15), "the 3 s cap did not apply: {:?}", t.elapsed());
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dying_before_its_client_spoke_is_restarted_with_backoff() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "flaky"]);
    // Exits at once on its first two starts, then serves.
    let flaky = "n=$(cat /tmp/starts 2>/dev/null || echo 0); echo $((n+1)) > /tmp/starts; \
                 if [ $n -lt 2 ]; then echo \"start $n failed\" >&2; exit 9; fi; exec cat";
    b.cli(&["mcp-server", "add", "flaky", "flaky", "--", "sh", "-c", flaky]);
    let (tx, mut r) = session(&b, connect("flaky", "flaky")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(msg("{\"id\":1}")).await.unwrap();
    assert_eq!(next(&mut r).await.unwrap(), "{\"id\":1}");
    assert_eq!(b.sh("flaky", "cat /tmp/starts").await.trim(), "3");
    assert!(b.log().contains("starting it again"), "{}", b.log());
    drop(tx);
    // One that never stays up: after the attempts, the exit is reported with its stderr.
    let (_tx, mut r) = session(&b, adhoc("flaky", "echo broken >&2; exit 9")).await.unwrap();
    let e = next(&mut r).await.unwrap_err();
    assert_eq!(e.exit_code, Some(9), "{e:?}");
    assert!(String::from_utf8_lossy(&e.stderr_tail).contains("broken"), "{e:?}");
    // Once the client has spoken, an exit is never hidden by a restart.
    let (tx, mut r) = session(&b, adhoc("flaky", "read -r l; exit 4")).await.unwrap();
    tx.send(msg("{\"id\":2}")).await.unwrap();
    assert_eq!(next(&mut r).await.unwrap_err().exit_code, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_twice_in_a_row_leaves_nothing_running() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "k"]);
    b.cli(&["mcp-server", "add", "k", "sleeper", "--", "sh", "-c", "trap '' TERM; exec sleep 1003"]);
    // Some MCP clients probe with a throwaway process, then start the real one: kill both quickly.
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        let mut child = b.berth(&["mcp", "k", "sleeper"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let t = Instant::now();
        while procs(&b, "k", "sleep 1003").await.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "the server never started\n{}", b.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
    }
    // Stdin closed, then SIGTERM (ignored), then SIGKILL: the agent's grace periods (2 s each).
    wait_no_procs(&b, "k", "sleep 1003", Duration::from_secs(10)).await;
    let m = reqwest_metrics(&b).await;
    assert!(m.contains("berth_mcp_sessions 0"), "{m}");
}

async fn reqwest_metrics(b: &TestBerthd) -> String {
    let url = format!("http://{}/metrics", b.metrics_addr());
    let t = Instant::now();
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains("berth_mcp_sessions 0") || t.elapsed() > Duration::from_secs(5) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forks_grandchildren_takes_them_along_when_its_session_ends() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "g"]);
    // A child in the background and a double-forked orphan (reparented to the agent), then the server.
    let script = "sleep 1004 & (sleep 1005 &) ; exec sh -c 'while read -r l; do echo \"$l\"; done'";
    let (tx, mut r) = session(&b, adhoc("g", script)).await.unwrap();
    tx.send(msg("{\"id\":1}")).await.unwrap();
    assert_eq!(next(&mut r).await.unwrap(), "{\"id\":1}");
    assert_eq!(procs(&b, "g", "sleep 100").await.len(), 2, "{:?}", procs(&b, "g", "sleep 100").await);
    // The client disconnects mid-session: the server and both descendants are gone within the grace.
    drop(tx);
    drop(r);
    wait_no_procs(&b, "g", "sleep 100", Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_and_a_hundred_sessions_pass_through_and_leave_nothing_behind() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "big"]);
    b.cli(&["mcp-server", "add", "big", "cat", "--", "cat"]);
    // 8 and 16 MiB messages, byte for byte, through gRPC and through the stdio bridge.
    for mib in [8usize, 16] {
        let payload = format!("{{\"id\":1,\"blob\":\"{}\"}}", "x\\u2028y".repeat((mib << 20) / 9));
        let (tx, mut r) = session(&b, connect("big", "cat")).await.unwrap();
        tx.send(msg(&payload)).await.unwrap();
        let back = next(&mut r).await.unwrap();
        assert!(back == payload, "{mib} MiB over gRPC came back different ({} bytes)", back.len());
        drop(tx);
        let mut child = b.berth(&["mcp", "big", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let line = format!("{payload}\n");
        let writer = std::thread::spawn(move || stdin.write_all(line.as_bytes()).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{mib} MiB through the bridge: {:?}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == format!("{payload}\n").into_bytes(), "{mib} MiB through the bridge came back different");
    }
    // 100 sessions opened and closed (half by a graceful end, half by dropping the stream).
    for i in 0..100 {
        let (tx, mut r) = session(&b, connect("big", "cat")).await.unwrap();
        tx.send(msg(&format!("{{\"n\":{i}}}"))).await.unwrap();
        assert_eq!(next(&mut r).await.unwrap(), format!("{{\"n\":{i}}}"));
        drop(tx);
        if i % 2 == 0 {
            assert_eq!(next(&mut r).await.unwrap_err().exit_code, Some(0));
        }
    }
    wait_no_procs(&b, "big", "cat", Duration::from_secs(10)).await;
    let m = reqwest_metrics(&b).await;
    assert!(m.contains("berth_mcp_sessions 0"), "{m}");
}
