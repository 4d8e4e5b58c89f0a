//! Watch streams, authentication, health, version and stats through the real agent.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use common::*;
use pb::WatchEventKind as K;

async fn next_event(s: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("no watch event within 10 s")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

/// Reads events until one matches; returns everything seen.
async fn until(s: &mut tonic::Streaming<pb::WatchEvent>, kind: K, path: &str) -> Vec<pb::WatchEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = next_event(s).await;
        let done = ev.kind == kind as i32 && ev.path == path;
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn watch_reports_changes_recursively_including_new_directories() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    std::fs::create_dir(agent.host("/data/existing")).unwrap();
    let mut s = c.watch(pb::WatchRequest { path: "".into(), recursive: true }).await.unwrap().into_inner();
    assert_eq!(next_event(&mut s).await.kind, K::Ready as i32);
    std::fs::write(agent.host("/data/existing/a.txt"), b"1").unwrap();
    until(&mut s, K::Created, "existing/a.txt").await;
    until(&mut s, K::ClosedWrite, "existing/a.txt").await;
    std::fs::create_dir(agent.host("/data/new")).unwrap();
    let ev = until(&mut s, K::Created, "new").await.pop().unwrap();
    assert!(ev.is_dir);
    // The new directory is watched too.
    std::fs::write(agent.host("/data/new/b.txt"), b"2").unwrap();
    until(&mut s, K::ClosedWrite, "new/b.txt").await;
    std::fs::rename(agent.host("/data/new/b.txt"), agent.host("/data/c.txt")).unwrap();
    let from = until(&mut s, K::RenamedFrom, "new/b.txt").await.pop().unwrap();
    let to = until(&mut s, K::RenamedTo, "c.txt").await.pop().unwrap();
    assert_eq!(from.rename_cookie, to.rename_cookie);
    std::fs::remove_file(agent.host("/data/c.txt")).unwrap();
    until(&mut s, K::Deleted, "c.txt").await;
    let err = c.watch(pb::WatchRequest { path: "missing".into(), recursive: true }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_slow_watcher_gets_an_explicit_overflow() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let mut s = c.watch(pb::WatchRequest { path: "".into(), recursive: false }).await.unwrap().into_inner();
    assert_eq!(next_event(&mut s).await.kind, K::Ready as i32);
    // Far more events than the queues hold, while the client reads nothing.
    let dir = agent.host("/data");
    tokio::task::spawn_blocking(move || {
        for i in 0..40_000 {
            std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        }
    })
    .await
    .unwrap();
    let mut overflow = false;
    for n in 0..200_000 {
        let ev = match tokio::time::timeout(Duration::from_secs(2), s.message()).await {
            Ok(Ok(Some(ev))) => ev,
            other => {
                eprintln!("watch ended after {n} events: {other:?}");
                break;
            }
        };
        if ev.kind == K::Overflow as i32 {
            overflow = true;
            break;
        }
    }
    assert!(overflow, "events were dropped without an OVERFLOW event");
}

#[tokio::test]
async fn every_rpc_requires_the_token() {
    let agent = TestAgent::start().await;
    let mut wrong = agent.client_with_token("definitely-not-the-token").await;
    let err = wrong.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err =
        wrong.read_file(pb::ReadFileRequest { path: "/etc/passwd".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = run(&mut wrong, argv(&["true"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // A raw channel with no authorization header at all, health included.
    let path = agent.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
    assert_eq!(health.check(req).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut bare = pb::container_service_client::ContainerServiceClient::new(channel);
    assert_eq!(bare.stats(pb::StatsRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn health_version_and_stats() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.protocol_version, 1);
    assert!(v.capabilities.iter().any(|c| c == "mcp.stdio"));
    assert!(v.max_mcp_message_bytes >= 16 << 20);
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.pid, agent.pid());
    assert!(s.rss_bytes > 0);
    assert_eq!((s.exec_sessions, s.mcp_sessions), (0, 0));
    let auth = berth_control_plane::agent_client::BearerAuth::new(&agent.token).unwrap();
    let path = agent.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(channel, auth);
    for service in ["", "berth.agent.v1.ContainerService"] {
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let r = health.check(req).await.unwrap().into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
}

#[tokio::test]
async fn optional_tcp_listener_serves_with_the_same_auth() {
    // Pick a free loopback port, then hand it to the agent.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let agent = TestAgent::start_with(None, &["--listen-tcp", &addr]).await;
    let auth = berth_control_plane::agent_client::BearerAuth::new(&agent.token).unwrap();
    let mut c = berth_control_plane::agent_client::connect_tcp(addr.parse().unwrap(), auth).await.unwrap();
    let r = run(&mut c, argv(&["sh", "-c", "echo over tcp"])).await.unwrap();
    assert_eq!(r.stdout_str(), "over tcp\n");
    let bad = berth_control_plane::agent_client::BearerAuth::new("wrong-token-wrong-token").unwrap();
    let mut c = berth_control_plane::agent_client::connect_tcp(addr.parse().unwrap(), bad).await.unwrap();
    assert_eq!(c.version(pb::VersionRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn bad_configuration_fails_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    let out = std::process::Command::new(agent_bin())
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--token-file")
        .arg(&short)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 are required"), "{err}");
    let out = std::process::Command::new(agent_bin())
        .arg("--token-file")
        .arg(dir.path().join("missing"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read token file"));
}
