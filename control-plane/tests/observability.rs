//! What operators see: the metrics endpoint's series follow bots, operations, RPCs, MCP sessions and
//! supervisor restarts; the health endpoints answer.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::support;
use std::io::Write;
use std::time::{Duration, Instant};

use support::berthd::TestBerthd;

async fn get(b: &TestBerthd, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", b.metrics_addr())).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of one series (exact name and labels), or None if absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))).map(|v| v.parse().unwrap())
}

async fn series(b: &TestBerthd, series: &str) -> f64 {
    let (code, text) = get(b, "/metrics").await;
    assert_eq!(code, 200);
    value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Waits until `series` has value `want`.
async fn until(b: &TestBerthd, s: &str, want: f64) {
    let t = Instant::now();
    loop {
        let (_, text) = get(b, "/metrics").await;
        if value(&text, s) == Some(want) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{s} never became {want}:\n{text}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_bots_operations_sessions_and_restarts() {
    let b = TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"]);
    assert_eq!(get(&b, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(&b, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(get(&b, "/nothing").await.0, 404);
    let (_, text) = get(&b, "/metrics").await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    for state in ["creating", "stopped", "starting", "running", "stopping", "deleting", "error"] {
        assert_eq!(value(&text, &format!("berth_bots{{state=\"{state}\"}}")), Some(0.0), "{text}");
    }

    b.cli(&["bot", "create", "m1"]);
    b.cli(&["bot", "create", "m2"]);
    assert_eq!(series(&b, "berth_bots{state=\"running\"}").await, 2.0);
    b.cli(&["bot", "stop", "m2"]);
    assert_eq!(series(&b, "berth_bots{state=\"running\"}").await, 1.0);
    assert_eq!(series(&b, "berth_bots{state=\"stopped\"}").await, 1.0);
    let created =
        series(&b, "berth_rpc_duration_seconds_count{method=\"/berth.controlplane.v1.BotService/CreateBot\"}");
    assert_eq!(created.await, 2.0);

    // Paths berthd does not serve share one label: a caller cannot grow the series without bound.
    let ch = berth_control_plane::agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    for i in 0..3 {
        grpc.ready().await.unwrap();
        let path = format!("/made.Up/Method{i}").parse().unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let e = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }
    let (_, text) = get(&b, "/metrics").await;
    assert!(!text.contains("made.Up"), "{text}");
    assert_eq!(value(&text, "berth_rpc_duration_seconds_count{method=\"unknown\"}"), Some(3.0), "{text}");

    b.cli(&["snapshot", "create", "m1", "--name", "s1"]);
    assert_eq!(series(&b, "berth_operations_total{kind=\"snapshot\",result=\"succeeded\"}").await, 1.0);
    b.cli(&["snapshot", "rollback", "m1", "s1"]);
    assert_eq!(series(&b, "berth_operations_total{kind=\"rollback\",result=\"succeeded\"}").await, 1.0);

    // An MCP session (a line relay to `cat`) is counted while open.
    let mut mcp = b
        .berth(&["mcp", "m1", "--quiet", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = mcp.stdin.take().unwrap();
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n").unwrap();
    until(&b, "berth_mcp_sessions", 1.0).await;
    drop(stdin);
    assert!(mcp.wait().unwrap().success());
    until(&b, "berth_mcp_sessions", 0.0).await;
    assert_eq!(series(&b, "berth_mcp_sessions_opened_total").await, 1.0);

    // The supervisor's restart of a killed agent is counted by reason.
    let bot: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "m1", "--json"])).unwrap();
    let pid = bot["pid"].as_u64().unwrap() as u32;
    // SAFETY: kill(2) on the bot's task pid, read from berthd.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    until(&b, "berth_bot_restarts_total{reason=\"task_exited\"}", 1.0).await;
    assert!(series(&b, "berth_reconcile_passes_total").await >= 1.0);

    b.cli(&["bot", "rm", "m1"]);
    b.cli(&["bot", "rm", "m2"]);
    assert_eq!(series(&b, "berth_bots{state=\"running\"}").await, 0.0);
    assert_eq!(series(&b, "berth_bots{state=\"stopped\"}").await, 0.0);
}

#[test]
fn a_bad_metrics_address_is_refused_at_start_naming_the_flag() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--metrics-listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("metrics_listen: \"nowhere\" is not an IP:PORT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_berthd_and_each_bot() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let b = TestBerthd::start(None);
    let ch = berth_control_plane::agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut h = HealthClient::new(ch);
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    let status = |r: tonic_health::pb::HealthCheckResponse| ServingStatus::try_from(r.status).unwrap();
    assert_eq!(status(h.check(check("")).await.unwrap().into_inner()), ServingStatus::Serving);
    let svc = "berth.controlplane.v1.BotService";
    assert_eq!(status(h.check(check(svc)).await.unwrap().into_inner()), ServingStatus::Serving);
    assert_eq!(h.check(check("bot/hb")).await.unwrap_err().code(), tonic::Code::NotFound);

    b.cli(&["bot", "create", "hb"]);
    // Health follows the bot's events, which are stored just after the call returns.
    let took = until_serving(&mut h, "bot/hb", Duration::from_secs(2)).await;
    eprintln!("bot/hb SERVING {took:?} after the create returned");
    // A watcher sees the bot stop.
    let mut watch = h.watch(check("bot/hb")).await.unwrap().into_inner();
    assert_eq!(status(watch.message().await.unwrap().unwrap()), ServingStatus::Serving);
    b.cli(&["bot", "stop", "hb"]);
    let t = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        if status(next) == ServingStatus::NotServing {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(status(h.check(check("bot/hb")).await.unwrap().into_inner()), ServingStatus::NotServing);
    b.cli(&["bot", "rm", "hb"]);
    let t = Instant::now();
    while h.check(check("bot/hb")).await.is_ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "a deleted bot still has a health status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A bot that existed before berthd started is known at once.
    b.cli(&["bot", "create", "early"]);
    let mut b = b;
    b.halt(libc::SIGTERM);
    b.spawn();
    let ch = berth_control_plane::agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut h = HealthClient::new(ch);
    until_serving(&mut h, "bot/early", Duration::from_secs(10)).await;
}

/// Polls `service`'s health until SERVING, failing after `within`; returns how long it took.
async fn until_serving(
    h: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
    within: Duration,
) -> Duration {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let t = Instant::now();
    loop {
        match h.check(HealthCheckRequest { service: service.into() }).await {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return t.elapsed(),
            other => assert!(t.elapsed() < within, "{service}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_within_its_deadline_while_containerd_is_frozen() {
    let b = TestBerthd::start(None);
    assert_eq!(get(&b, "/readyz").await, (200, "ready\n".to_string()));
    let ctd = b.containerd.pid() as i32;
    // SAFETY: signals to a child process of this test.
    unsafe { libc::kill(ctd, libc::SIGSTOP) };
    let t = Instant::now();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(8)).build().unwrap();
    let r = client.get(format!("http://{}/readyz", b.metrics_addr())).send().await;
    unsafe { libc::kill(ctd, libc::SIGCONT) };
    let took = t.elapsed();
    let r = r.expect("/readyz gave no answer while containerd was frozen");
    assert_eq!(r.status().as_u16(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("containerd did not answer within 3 s"), "{text}");
    assert!(took < Duration::from_secs(6), "/readyz took {took:?}");
    // Control: ready again once containerd is.
    assert_eq!(get(&b, "/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_a_frozen_berthd_within_seconds() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "quiet"]);
    // An exec that prints nothing for a long time, then berthd frozen under it; and a new call.
    let mut exec = b.berth(&["exec", "quiet", "--", "sleep", "120"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = b.pid().unwrap() as i32;
    // SAFETY: signals to a child process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = Instant::now();
    let ls = b.berth(&["bot", "ls"]).output().unwrap();
    let ls_took = t.elapsed();
    let mut exec_took = None;
    while t.elapsed() < Duration::from_secs(40) {
        if exec.try_wait().unwrap().is_some() {
            exec_took = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let _ = exec.kill();
    let _ = exec.wait();
    assert!(!ls.status.success(), "bot ls succeeded against a frozen berthd");
    // Both are ended by the HTTP/2 keepalive (a PING every 10 s, 5 s to answer).
    assert!(ls_took < Duration::from_secs(20), "bot ls took {ls_took:?} to fail");
    let exec_took = exec_took.expect("an exec over a frozen berthd never failed");
    assert!(exec_took < Duration::from_secs(25), "the exec took {exec_took:?} to notice");
    // Control: berthd thawed answers again.
    assert!(b.cli(&["bot", "ls"]).contains("quiet"));
}
