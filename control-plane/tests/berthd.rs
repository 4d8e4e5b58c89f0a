//! berthd end to end: the real daemon on a private containerd, driven through its gRPC API and the
//! `berth` CLI as a user would, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::time::Duration;

use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use common::{argv, collect, eventually, exec_open, run};
use pb::bot_service_client::BotServiceClient;
use support::berthd::TestBerthd;
use support::postgres::PrivatePostgres;
use tonic::transport::Channel;

async fn bots(b: &TestBerthd) -> BotServiceClient<Channel> {
    BotServiceClient::new(agent_client::channel(b.socket.to_str().unwrap()).await.unwrap())
}

async fn agent(b: &TestBerthd, bot: &str) -> AgentClient {
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    agent_client::agent_on(ch, BearerAuth::none().with_bot(bot).unwrap())
}

fn out(mut c: std::process::Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn lifecycle(b: &TestBerthd) {
    // Create without starting, then start.
    let (rc, stdout, err) = out(b.berth(&[
        "bot",
        "create",
        "alpha",
        "--no-start",
        "--memory",
        "256M",
        "-e",
        "GREETING=hello",
        "-l",
        "team=a",
    ]));
    assert_eq!(rc, 0, "{err}\n{}", b.log());
    assert_eq!(stdout.trim(), "alpha stopped");
    let (rc, stdout, _) = out(b.berth(&["bot", "start", "alpha"]));
    assert_eq!((rc, stdout.trim()), (0, "alpha running"));
    // Exec through berthd: env, hostname, exit codes.
    let (rc, stdout, _) = out(b.berth(&["exec", "alpha", "--", "sh", "-c", "echo $GREETING from $(hostname); exit 3"]));
    assert_eq!((rc, stdout.as_str()), (3, "hello from alpha\n"));
    // Files through berthd.
    let local = b.dir.path().join("note.txt");
    std::fs::write(&local, "keep this").unwrap();
    let (rc, _, err) = out(b.berth(&["cp", "-p", local.to_str().unwrap(), "alpha:/data/notes/note.txt"]));
    assert_eq!(rc, 0, "{err}");
    let back = b.dir.path().join("back.txt");
    let (rc, _, err) = out(b.berth(&["cp", "alpha:/data/notes/note.txt", back.to_str().unwrap()]));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "keep this");
    // Stop: exec is refused with the bot's state.
    let (rc, stdout, _) = out(b.berth(&["bot", "stop", "alpha"]));
    assert_eq!((rc, stdout.trim()), (0, "alpha stopped"));
    let (rc, _, err) = out(b.berth(&["exec", "alpha", "--", "true"]));
    assert_eq!(rc, 1);
    assert!(err.contains("is stopped, not running"), "{err}");
    // Start again: the data is still there.
    let (rc, _, _) = out(b.berth(&["bot", "start", "alpha"]));
    assert_eq!(rc, 0);
    let (rc, stdout, _) = out(b.berth(&["exec", "alpha", "--", "cat", "/data/notes/note.txt"]));
    assert_eq!((rc, stdout.as_str()), (0, "keep this"));
    let (rc, _, _) = out(b.berth(&["cp", local.to_str().unwrap(), "alpha:/data/notes/note.txt"]));
    assert_eq!(rc, 0);
    // fs commands.
    let (rc, _, err) = out(b.berth(&["fs", "mkdir", "-p", "alpha:/data/a/b"]));
    assert_eq!(rc, 0, "{err}");
    let (rc, _, _) = out(b.berth(&["fs", "mv", "alpha:/data/notes/note.txt", "alpha:/data/a/b/moved.txt"]));
    assert_eq!(rc, 0);
    let (_, stdout, _) = out(b.berth(&["fs", "ls", "-r", "alpha:/data"]));
    assert!(stdout.contains("a/b/moved.txt"), "{stdout}");
    let (_, stdout, _) = out(b.berth(&["fs", "stat", "alpha:/data/a/b/moved.txt"]));
    assert!(stdout.contains("size_bytes: 9"), "{stdout}");
    let (rc, _, err) = out(b.berth(&["fs", "rm", "alpha:/data/a"]));
    assert_eq!(rc, 1, "a non-empty directory needs -r");
    assert!(err.contains("not empty"), "{err}");
    let (rc, _, _) = out(b.berth(&["fs", "rm", "-r", "alpha:/data/a"]));
    assert_eq!(rc, 0);
    let (rc, _, _) = out(b.berth(&["fs", "mv", "alpha:/x", "other:/y"]));
    assert_eq!(rc, 1);
    // get --json and ls with a label selector.
    let (_, stdout, _) = out(b.berth(&["bot", "get", "alpha", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["memory_bytes"], 256 << 20);
    assert_eq!(v["env_names"], serde_json::json!(["GREETING"]));
    assert!(v["pid"].as_u64().unwrap() > 0);
    let (_, stdout, _) = out(b.berth(&["bot", "ls", "-l", "team=a", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap().as_array().unwrap().len(), 1);
    let (_, stdout, _) = out(b.berth(&["bot", "ls", "-l", "team=b", "--json"]));
    assert_eq!(stdout.trim(), "[]");
    // Snapshots and operations are recorded in this database too.
    b.cli(&["snapshot", "create", "alpha", "--name", "s1"]);
    b.cli(&["snapshot", "rollback", "alpha", "s1"]);
    let ops: serde_json::Value = serde_json::from_str(&b.cli(&["ops", "ls", "alpha", "--json"])).unwrap();
    let kinds: Vec<&str> = ops.as_array().unwrap().iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollback", "snapshot"], "{ops}");
    assert!(ops.as_array().unwrap().iter().all(|o| o["state"] == "succeeded"), "{ops}");
    assert_eq!(b.cli(&["ops", "ls", "nobody", "--json"]).trim(), "[]");
    // Delete: gone from berthd and from containerd, its task log too.
    let log = b.dir.path().join("state/logs/bot-alpha.log");
    assert!(log.exists(), "no task log at {}", log.display());
    let (rc, _, _) = out(b.berth(&["bot", "rm", "alpha"]));
    assert_eq!(rc, 0);
    let (rc, _, err) = out(b.berth(&["bot", "get", "alpha"]));
    assert_eq!(rc, 1);
    assert!(err.contains("not found"), "{err}");
    assert!(b.containerd.ctr_ls("containers").is_empty());
    let snaps = b.containerd.ctr(&["snapshots", "ls"]);
    assert!(!snaps.contains("berth.alpha") && !snaps.contains("bot-alpha"), "{snaps}");
    assert!(!b.dir.path().join("run/alpha").exists(), "the bot's agent directory was left behind");
    assert!(!log.exists(), "the task log outlived its bot");
}

#[tokio::test]
async fn lifecycle_on_sqlite() {
    let b = TestBerthd::start(None);
    lifecycle(&b).await;
}

#[tokio::test]
async fn an_agent_that_exits_at_start_is_reported_at_once_with_what_it_said() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "broken"]);
    // Replace the bot's agent with one that refuses to run, as an image with an old agent would. It
    // lingers a second before exiting: Debian's containerd 1.6 shim, on a loaded host, can drop the last
    // words of a task's init process that exits right after writing them (measured with two CPU hogs
    // beside this test: 4, then 6 runs of 6 lost them; none of 6 with the pause).
    let script = "mv /sbin/berth-agent /sbin/berth-agent.real && printf '#!/bin/sh\\necho \"agent refused: unknown flag\" >&2\\nsleep 1\\nexit 3\\n' > /sbin/berth-agent && chmod +x /sbin/berth-agent";
    b.sh("broken", script).await;
    b.cli(&["bot", "stop", "broken"]);
    let (rc, _, err) = out(b.berth(&["bot", "start", "broken"]));
    assert_ne!(rc, 0);
    // Not "did not answer within 15000 ms": the exit and the agent's own words.
    assert!(
        err.contains("exited (status 3) instead of serving") && err.contains("agent refused: unknown flag"),
        "{err}"
    );
    let bot = bots(&b)
        .await
        .get_bot(pb::GetBotRequest { name: "broken".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bot
        .unwrap();
    assert_eq!(bot.state, pb::BotState::Error as i32);
    assert!(bot.last_error.contains("exited (status 3)"), "{bot:?}");
}

#[tokio::test]
async fn lifecycle_on_postgres() {
    let pg = PrivatePostgres::start();
    let b = TestBerthd::start(Some(pg.database("berth")));
    lifecycle(&b).await;
}

#[tokio::test]
async fn errors_carry_the_right_codes() {
    let b = TestBerthd::start(None);
    let mut c = bots(&b).await;
    let create = |name: &str, image: &str| pb::CreateBotRequest {
        name: name.into(),
        image: image.into(),
        start: Some(true),
        ..Default::default()
    };
    let err = c.create_bot(create("Bad_Name", "")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c.create_bot(create("ghost", "no/such:image")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("berth/minimal:latest"), "lists what is available: {}", err.message());
    c.create_bot(create("beta", "")).await.unwrap();
    let err = c.create_bot(create("beta", "")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = c.get_bot(pb::GetBotRequest { name: "nobody".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Starting a running bot is a no-op; stopping a stopped one too.
    c.start_bot(pb::StartBotRequest { name: "beta".into() }).await.unwrap();
    // Agent calls need the bot named.
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut anon = agent_client::agent_on(ch, BearerAuth::none());
    assert_eq!(anon.version(apb::VersionRequest {}).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let mut ghost = agent(&b, "nobody").await;
    assert_eq!(ghost.version(apb::VersionRequest {}).await.unwrap_err().code(), tonic::Code::NotFound);
    c.stop_bot(pb::StopBotRequest { name: "beta".into(), timeout_ms: 0 }).await.unwrap();
    let mut a = agent(&b, "beta").await;
    assert_eq!(a.version(apb::VersionRequest {}).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    c.delete_bot(pb::DeleteBotRequest { name: "beta".into(), keep_data: false }).await.unwrap();
    // Reflection lists the services (what grpcurl uses).
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request, server_reflection_response};
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut refl = ServerReflectionClient::new(ch);
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in
        ["berth.controlplane.v1.BotService", "berth.controlplane.v1.ImageService", "berth.agent.v1.ContainerService"]
    {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

#[tokio::test]
async fn events_and_exec_cancellation_flow_through() {
    let b = TestBerthd::start(None);
    let mut c = bots(&b).await;
    let mut events =
        c.watch_events(pb::WatchEventsRequest { name: "gamma".into(), after_id: None }).await.unwrap().into_inner();
    c.create_bot(pb::CreateBotRequest { name: "gamma".into(), start: Some(true), ..Default::default() }).await.unwrap();
    let mut kinds = Vec::new();
    while !kinds.contains(&"started".to_string()) {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        kinds.push(e.kind);
    }
    assert_eq!(kinds, ["creating", "created", "starting", "started"]);
    // A client that goes away mid-exec: the process in the bot is killed.
    let mut a = agent(&b, "gamma").await;
    let (tx, mut stream) = exec_open(&mut a, argv(&["sleep", "300"])).await.unwrap();
    stream.message().await.unwrap();
    let list = a.list_sessions(apb::ListSessionsRequest {}).await.unwrap().into_inner().sessions;
    assert_eq!(list.len(), 1);
    drop(stream);
    drop(tx);
    let mut probe = agent(&b, "gamma").await;
    let mut gone = false;
    for _ in 0..100 {
        if probe.list_sessions(apb::ListSessionsRequest {}).await.unwrap().into_inner().sessions.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the exec survived its client's disconnect through berthd");
    c.delete_bot(pb::DeleteBotRequest { name: "gamma".into(), keep_data: false }).await.unwrap();
}

/// `berth ARGS`, left running: its stdout lines as they come.
/// Runs `berth ARGS`; its stdout lines, then its stderr lines, as they come.
fn follow(
    b: &TestBerthd,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut c = b.berth(args);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let lines = |from: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().unwrap()));
    let err = lines(Box::new(child.stderr.take().unwrap()));
    (child, out, err)
}

/// `berth bot events`: follows across a berthd restart, resuming after the last event it printed (each
/// event once); `--after` replays what was kept.
#[tokio::test]
async fn berth_bot_events_follows_across_a_restart_with_each_event_once() {
    let mut b = TestBerthd::start(None);
    // From the first event kept (none yet): nothing is missed however late it connects.
    let (mut child, rx, _) = follow(&b, &["bot", "events", "--json", "--after", "0"]);
    let next = || -> serde_json::Value {
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(20)).expect("an event line")).unwrap()
    };
    bots(&b).await.create_bot(pb::CreateBotRequest { name: "ev".into(), ..Default::default() }).await.unwrap();
    let mut seen = vec![next()];
    while seen.last().unwrap()["kind"] != "started" {
        seen.push(next());
    }
    b.halt(libc::SIGTERM);
    b.spawn();
    bots(&b).await.stop_bot(pb::StopBotRequest { name: "ev".into(), ..Default::default() }).await.unwrap();
    while seen.last().unwrap()["kind"] != "stopped" {
        seen.push(next());
    }
    let _ = child.kill();
    let _ = child.wait();
    let kinds: Vec<&str> = seen.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["creating", "created", "starting", "started", "stopping", "stopped"]);
    let ids: Vec<i64> = seen.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    // --after replays what is kept after an id, one tab-separated line each.
    let (mut child, rx, _) = follow(&b, &["bot", "events", "ev", "--after", &ids[3].to_string()]);
    let lines: Vec<String> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap()).collect();
    let _ = child.kill();
    let _ = child.wait();
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    assert_eq!(fields[0][0], ids[4].to_string(), "{lines:?}");
    assert_eq!((fields[0][3], fields[0][4], fields[0][5]), ("ev", "stopping", "stopping"), "{lines:?}");
    assert_eq!((fields[1][3], fields[1][4], fields[1][5]), ("ev", "stopped", "stopped"), "{lines:?}");
}

/// `berth bot events` without `--after`, dropped before its first event, resumes where its first watch
/// started: an event stored while it was away (berthd records at its restart, before it serves, that a
/// bot's task died meanwhile) is printed.
#[tokio::test]
async fn berth_bot_events_dropped_before_its_first_event_misses_nothing() {
    let mut b = TestBerthd::start(None);
    let req = pb::CreateBotRequest { name: "quiet".into(), start: Some(true), ..Default::default() };
    bots(&b).await.create_bot(req).await.unwrap();
    let (mut child, rx, errs) = follow(&b, &["bot", "events", "--json"]);
    let said = errs.recv_timeout(Duration::from_secs(20)).expect("where the watch starts");
    assert!(said.starts_with("berth: following events after id "), "{said}");
    b.halt(libc::SIGKILL);
    b.containerd.ctr(&["tasks", "kill", "-s", "SIGKILL", "bot-quiet"]);
    let t = std::time::Instant::now();
    while b.containerd.ctr(&["tasks", "ls"]).lines().any(|l| l.starts_with("bot-quiet") && l.contains("RUNNING")) {
        assert!(t.elapsed() < Duration::from_secs(10), "the bot's task outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.spawn();
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("an event line");
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((e["name"].as_str(), e["kind"].as_str()), (Some("quiet"), Some("recovered")), "{e}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sixteen_clients_at_once_on_several_bots() {
    let b = TestBerthd::start(None);
    let mut c = bots(&b).await;
    for name in ["d1", "d2", "d3"] {
        c.create_bot(pb::CreateBotRequest { name: name.into(), start: Some(true), ..Default::default() })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let bot = ["d1", "d2", "d3"][i % 3];
        let mut a = agent(&b, bot).await;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // An exec streaming 4 MB of output.
                let r = run(&mut a, argv(&["sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x"])).await.unwrap();
                assert_eq!(r.stdout.len(), 4_000_000);
                assert!(r.stdout.iter().all(|c| *c == b'x'));
            } else {
                // A 4 MiB write and read back.
                let data: Vec<u8> = (0..4u32 << 20).map(|x| (x * 7 + i as u32) as u8).collect();
                let path = format!("/data/f{i}.bin");
                a.write_file(apb::WriteFileRequest { path: path.clone(), content: data.clone(), ..Default::default() })
                    .await
                    .unwrap();
                let req = apb::DownloadRequest { path, ..Default::default() };
                let mut s = a.download(req).await.unwrap().into_inner();
                let mut got = Vec::new();
                while let Some(ch) = s.message().await.unwrap() {
                    got.extend(ch.data);
                }
                assert_eq!(got, data);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t).await.unwrap().unwrap();
    }
    for name in ["d1", "d2", "d3"] {
        c.delete_bot(pb::DeleteBotRequest { name: name.into(), keep_data: false }).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || b.containerd.ctr_ls("containers").is_empty()).await);
    let _ = collect; // shared harness helper
}

#[tokio::test]
async fn tcp_requires_an_api_token_the_socket_checks_one_when_sent() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "first-token-0123456789\nsecond-token-0123456789\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let b = TestBerthd::start_with(None, &["--listen-tcp", &addr, "--api-token-file", tokens.to_str().unwrap()]);
    let url = format!("http://{addr}");
    // Over TCP: no token, a wrong token: refused, saying which file the tokens come from.
    let (rc, _, err) = out({
        let mut c = b.berth(&["bot", "ls"]);
        c.env("BERTH_ADDR", &url);
        c
    });
    assert_eq!(rc, 1);
    assert!(err.contains("api token") && err.contains("api_token_file"), "{err}");
    // A wrong token is refused on the socket too: a token, when sent, is always checked.
    for target in [url.as_str(), b.socket.to_str().unwrap()] {
        let (rc, _, err) = out({
            let mut c = b.berth(&["bot", "ls"]);
            c.env("BERTH_ADDR", target).env("BERTH_TOKEN", "not-a-valid-token");
            c
        });
        assert_eq!(rc, 1);
        assert!(err.contains("invalid API token"), "{err}");
    }
    // The Unix socket is guarded by its permissions (0600, berthd's user): no token needed there.
    let (rc, _, err) = out({
        let mut c = b.berth(&["bot", "ls"]);
        c.env("BERTH_ADDR", b.socket.to_str().unwrap());
        c
    });
    assert_eq!(rc, 0, "the socket without a token: {err}");
    // Either configured token works, over TCP too, for lifecycle and proxied agent calls.
    for token in ["first-token-0123456789", "second-token-0123456789"] {
        let (rc, _, err) = out({
            let mut c = b.berth(&["bot", "ls"]);
            c.env("BERTH_ADDR", &url).env("BERTH_TOKEN", token);
            c
        });
        assert_eq!(rc, 0, "{err}");
    }
    let (rc, _, err) = out({
        let mut c = b.berth(&["bot", "create", "tcp1"]);
        c.env("BERTH_ADDR", &url).env("BERTH_TOKEN", "first-token-0123456789");
        c
    });
    assert_eq!(rc, 0, "{err}");
    let (rc, stdout, err) = out({
        let mut c = b.berth(&["exec", "tcp1", "--", "echo", "over tcp"]);
        c.env("BERTH_ADDR", &url).env("BERTH_TOKEN", "first-token-0123456789");
        c
    });
    assert_eq!((rc, stdout.as_str()), (0, "over tcp\n"), "{err}");
    let (rc, _, _) = out({
        let mut c = b.berth(&["bot", "rm", "tcp1"]);
        c.env("BERTH_TOKEN", "second-token-0123456789");
        c
    });
    assert_eq!(rc, 0);
}

#[test]
fn tcp_without_tokens_is_refused_at_start() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--listen-tcp", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("listen_tcp needs api_token_file"));
}

#[test]
fn a_second_berthd_on_the_same_state_refuses_to_start_and_leaves_the_first_serving() {
    let b = TestBerthd::start(None);
    let o = b.second_instance().output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another berthd is already running on the state directory"), "{err}");
    // The first one still owns its socket and answers.
    b.cli(&["bot", "create", "still-here", "--no-start"]);
    assert!(b.cli(&["bot", "ls"]).contains("still-here"));
}

/// The bridge's gateway address for a /24 subnet like 10.1.2.0/24.
fn gateway(subnet: &str) -> String {
    let base = subnet.split('/').next().unwrap();
    let mut parts: Vec<&str> = base.split('.').collect();
    parts[3] = "1";
    parts.join(".")
}

#[tokio::test]
async fn bots_get_a_stable_address_on_their_own_network_namespace() {
    let b = TestBerthd::start(None);
    let mut c = bots(&b).await;
    let bot = c
        .create_bot(pb::CreateBotRequest { name: "net1".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bot
        .unwrap();
    let (_, got) = (
        bot.clone(),
        c.get_bot(pb::GetBotRequest { name: "net1".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .bot
            .unwrap(),
    );
    let ip = got.ip.clone();
    assert!(ip.starts_with(&b.subnet[..b.subnet.rfind('.').unwrap()]), "{ip} not in {}", b.subnet);
    let mut a = agent(&b, "net1").await;
    let r = run(&mut a, argv(&["ip", "-4", "addr", "show", "eth0"])).await.unwrap();
    assert!(r.stdout_str().contains(&format!("{ip}/")), "{}", r.stdout_str());
    // The gateway answers (a closed port resets: bots have no raw sockets for ping, and no host port is
    // open to them).
    let probe = format!("nc -w 3 {} 1 2>&1", gateway(&b.subnet));
    let r = run(&mut a, argv(&["sh", "-c", &probe])).await.unwrap();
    assert!(r.stdout_str().contains("refused"), "the bot cannot reach its gateway: {}", r.stdout_str());
    // The namespace outlives the task: same address after a restart.
    c.stop_bot(pb::StopBotRequest { name: "net1".into(), timeout_ms: 0 }).await.unwrap();
    c.start_bot(pb::StartBotRequest { name: "net1".into() }).await.unwrap();
    let again = c
        .get_bot(pb::GetBotRequest { name: "net1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bot
        .unwrap();
    assert_eq!(again.ip, ip);
    let mut a = agent(&b, "net1").await;
    let r = run(&mut a, argv(&["ip", "-4", "addr", "show", "eth0"])).await.unwrap();
    assert!(r.stdout_str().contains(&format!("{ip}/")));
    c.delete_bot(pb::DeleteBotRequest { name: "net1".into(), keep_data: false }).await.unwrap();
    assert!(!b.dir.path().join("run/netns/net1").exists(), "the network namespace leaked");
    let veths = std::process::Command::new("ip").args(["-o", "link", "show", "master", &b.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&veths.stdout).trim().is_empty(), "veth left on the bridge");
}

/// A CNI bin dir whose plugin `flaky` fails its first `fail_adds` ADDs (all of them with `u32::MAX`).
fn flaky_cni(dir: &std::path::Path, flaky: &str, fail_adds: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("cni");
    std::fs::create_dir_all(&bin).unwrap();
    for p in ["bridge", "host-local", "loopback"].into_iter().filter(|p| *p != flaky) {
        std::os::unix::fs::symlink(format!("/usr/lib/cni/{p}"), bin.join(p)).unwrap();
    }
    let count = dir.join("adds");
    let script = format!(
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}\n  \
         if [ \"$n\" -lt {fail_adds} ]; then echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected failure\"}}'; exit 1; fi\nfi\nexec /usr/lib/cni/{flaky}\n",
        c = count.display()
    );
    std::fs::write(bin.join(flaky), script).unwrap();
    std::fs::set_permissions(bin.join(flaky), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test]
async fn transient_cni_failures_are_retried_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let bin = flaky_cni(dir.path(), "bridge", 2);
    let b = TestBerthd::start_with(None, &["--cni-bin-dir", bin.to_str().unwrap()]);
    let mut c = bots(&b).await;
    let bot = c
        .create_bot(pb::CreateBotRequest { name: "flaky".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bot
        .unwrap();
    assert_eq!(bot.state, pb::BotState::Running as i32);
    assert_eq!(std::fs::read_to_string(dir.path().join("adds")).unwrap().trim(), "3");
    c.delete_bot(pb::DeleteBotRequest { name: "flaky".into(), keep_data: false }).await.unwrap();
}

#[tokio::test]
async fn a_permanent_cni_failure_fails_the_create_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // loopback runs after the bridge plugin allocated an IP and made a veth: all of that must be undone.
    let bin = flaky_cni(dir.path(), "loopback", u32::MAX);
    let b = TestBerthd::start_with(None, &["--cni-bin-dir", bin.to_str().unwrap(), "--cni-attempts", "2"]);
    let mut c = bots(&b).await;
    let err = c
        .create_bot(pb::CreateBotRequest { name: "doomed".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("injected failure"), "{}", err.message());
    assert!(err.message().contains("network setup failed"), "{}", err.message());
    // No record is left for the reconciler to chase.
    let gone = c.get_bot(pb::GetBotRequest { name: "doomed".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    // Nothing half-made: no namespace, no container, no snapshot beyond the image's, no veth, no lease.
    assert!(!b.dir.path().join("run/netns/doomed").exists());
    assert!(!std::fs::read_to_string("/proc/self/mounts").unwrap().contains("netns/doomed"));
    assert!(b.containerd.ctr_ls("containers").is_empty());
    assert!(!b.containerd.ctr_ls("snapshots").iter().any(|s| s.contains("doomed")));
    let veths = std::process::Command::new("ip").args(["-o", "link", "show", "master", &b.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&veths.stdout).trim().is_empty());
    let ipam = b.dir.path().join("state/ipam/berth");
    assert!(ipam.exists(), "host-local never ran, so this test proves nothing");
    let leases: Vec<_> = std::fs::read_dir(&ipam).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leases.iter().all(|n| !n.to_string_lossy().starts_with("10.")), "an IP stayed allocated: {leases:?}");
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_anonymously_and_with_basic_auth() {
    let open = support::registry::PrivateRegistry::start(None);
    let locked = support::registry::PrivateRegistry::start(Some(("berth", "s3cret-pass")));
    let archive = support::containerd::minimal_image();
    open.push_archive(&archive, "bots/minimal", "v1").await;
    locked.push_archive(&archive, "bots/minimal", "v2").await;
    let insecure = format!("{},{}", open.addr, locked.addr);
    let b = TestBerthd::start_with(None, &["--insecure-registry", &insecure]);
    let reference = format!("{}/bots/minimal:v1", open.addr);
    let (rc, stdout, err) = out(b.berth(&["image", "pull", &reference]));
    assert_eq!(rc, 0, "{err}\n{}", b.log());
    assert!(stdout.starts_with(&reference), "{stdout}");
    let (_, stdout, _) = out(b.berth(&["image", "ls"]));
    assert!(stdout.contains(&reference) && stdout.contains("berth/minimal:latest"), "{stdout}");
    // A bot from the pulled image works.
    let (rc, _, err) = out(b.berth(&["bot", "create", "pulled", "--image", &reference]));
    assert_eq!(rc, 0, "{err}");
    let (rc, stdout, _) = out(b.berth(&["exec", "pulled", "--", "cat", "/proc/1/comm"]));
    assert_eq!((rc, stdout.trim()), (0, "berth-agent"));
    let (rc, _, _) = out(b.berth(&["bot", "rm", "pulled"]));
    assert_eq!(rc, 0);
    // Basic auth: refused without credentials, accepted with them.
    let locked_ref = format!("{}/bots/minimal:v2", locked.addr);
    let (rc, _, err) = out(b.berth(&["image", "pull", &locked_ref]));
    assert_eq!(rc, 1);
    assert!(err.contains("authentication failed"), "{err}");
    let (rc, _, err) = out({
        let mut c = b.berth(&["image", "pull", &locked_ref, "--username", "berth"]);
        c.env("BERTH_REGISTRY_PASSWORD", "s3cret-pass");
        c
    });
    assert_eq!(rc, 0, "{err}");
    // Missing tags and bad references are clear errors.
    let (rc, _, err) = out(b.berth(&["image", "pull", &format!("{}/bots/minimal:nope", open.addr)]));
    assert_eq!(rc, 1);
    assert!(err.contains("not found"), "{err}");
    let (rc, _, err) = out(b.berth(&["image", "pull", "ubuntu"]));
    assert_eq!(rc, 1);
    assert!(err.contains("not an image reference"), "{err}");
}

/// The nat table's rules, as `iptables -S` prints them.
fn nat_rules() -> String {
    let o = std::process::Command::new("iptables").args(["-w", "5", "-t", "nat", "-S"]).output().unwrap();
    assert!(o.status.success(), "iptables: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn masquerade_is_installed_restored_when_deleted_and_removed_when_turned_off() {
    let mut b = TestBerthd::start_with(None, &["--masquerade", "--reconcile-interval-ms", "300"]);
    let rule =
        format!("-A POSTROUTING -s {0} ! -d {0} -m comment --comment \"berth:{1}\" -j MASQUERADE", b.subnet, b.bridge);
    let count = |rule: &str| nat_rules().lines().filter(|l| *l == rule).count();
    assert_eq!(count(&rule), 1, "{}", nat_rules());
    bots(&b)
        .await
        .create_bot(pb::CreateBotRequest { name: "out".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap();
    // Deleted by hand (or by a firewall reload): the reconciler puts it back, and says so.
    let delete = rule.replacen("-A", "-D", 1).replace('"', "");
    let o =
        std::process::Command::new("iptables").args(["-w", "5", "-t", "nat"]).args(delete.split(' ')).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = std::time::Instant::now();
    while count(&rule) == 0 {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "not restored:\n{}", b.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count(&rule), 1);
    // The log line follows the repair (written after iptables returns): wait for it too.
    while !b.log().contains("restored the bots' firewall rules") {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "repair not reported:\n{}", b.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // No per-bot NAT chains: one rule per network.
    assert!(!nat_rules().contains("CNI-"), "{}", nat_rules());
    // Restarted with it turned off: the rule goes (the bot keeps running).
    b.halt(libc::SIGTERM);
    let pos = b.args_mut().iter().position(|a| a == "--masquerade").unwrap();
    b.args_mut().insert(pos + 1, "false".into());
    b.spawn();
    assert_eq!(count(&rule), 0, "{}", nat_rules());
    assert!(b.cli(&["bot", "ls"]).contains("running"));
}

#[tokio::test]
async fn images_are_pulled_over_tls_with_bearer_token_auth() {
    let reg = support::registry::PrivateRegistry::start_tls_token("berth", "t0ken-pass");
    reg.push_archive(&support::containerd::minimal_image(), "bots/minimal", "v3").await;
    let ca = reg.ca.clone().unwrap();
    let b = TestBerthd::start_with(None, &["--registry-ca", ca.to_str().unwrap()]);
    let reference = format!("{}/bots/minimal:v3", reg.addr);
    // The registry answers 401 with a Bearer challenge; without credentials the token service refuses.
    let (rc, _, err) = out(b.berth(&["image", "pull", &reference]));
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    let pull = |b: &TestBerthd| {
        let mut c = b.berth(&["image", "pull", &reference, "--username", "berth"]);
        c.env("BERTH_REGISTRY_PASSWORD", "t0ken-pass");
        out(c)
    };
    let (rc, stdout, err) = pull(&b);
    assert_eq!(rc, 0, "{err}\n{}", b.log());
    assert!(stdout.starts_with(&reference), "{stdout}");
    let (rc, _, err) = out(b.berth(&["bot", "create", "tls", "--image", &reference]));
    assert_eq!(rc, 0, "{err}");
    let (rc, stdout, _) = out(b.berth(&["exec", "tls", "--", "cat", "/proc/1/comm"]));
    assert_eq!((rc, stdout.trim()), (0, "berth-agent"));
    // A berthd that does not trust the registry's CA refuses the connection, and says so.
    let untrusting = TestBerthd::start(None);
    let (rc, _, err) = pull(&untrusting);
    assert_eq!(rc, 1);
    assert!(err.contains("unavailable") || err.contains("certificate") || err.contains("reach"), "{err}");
    // A CA file that is not a certificate stops berthd at start, naming the flag.
    let bad = b.dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--registry-ca", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("registry_cas:"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn configuration_comes_from_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berthd.toml");
    std::fs::write(&file, "bridge = \"fromfile\"\nstop_timeout_ms = 1234\nsubnet = \"10.9.0.0/24\"\n").unwrap();
    let effective = |env: &[(&str, &str)], flags: &[&str]| -> String {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
            .env("BERTH_CONFIG", &file)
            .envs(env.iter().copied())
            .arg("--print-config")
            .args(flags)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let c = effective(&[], &[]);
    assert!(c.contains("bridge = \"fromfile\"") && c.contains("stop_timeout_ms = 1234"), "{c}");
    let c = effective(&[("BERTH_BRIDGE", "fromenv"), ("BERTH_MASQUERADE", "yes")], &[]);
    assert!(c.contains("bridge = \"fromenv\"") && c.contains("masquerade = true"), "{c}");
    let c = effective(&[("BERTH_BRIDGE", "fromenv")], &["--bridge", "fromflag"]);
    assert!(c.contains("bridge = \"fromflag\"") && c.contains("subnet = \"10.9.0.0/24\""), "{c}");
    // A wrong key in the file is refused, naming it and the file.
    std::fs::write(&file, "bridg = \"typo\"\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd")).arg("--config").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bridg") && err.contains("berthd.toml"), "{err}");
    // The documented defaults are a valid configuration file.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd")).arg("--print-default-config").output().unwrap();
    std::fs::write(&file, &o.stdout).unwrap();
    let c = effective(&[], &[]);
    assert!(c.contains("bridge = \"berth0\""), "{c}");
}
