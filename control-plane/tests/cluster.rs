//! Cluster membership with real parts: daemons in one process, each with its own containerd, state and
//! network, sharing one private PostgreSQL. They join under their names, list each other, cordon; a
//! stopped node is marked lost by the others once its heartbeat is older than `node_lost_after_ms`, and
//! is active again when it comes back; two live nodes cannot share a name; cluster mode on SQLite is
//! refused naming the setting; a single-node berthd answers the node calls FAILED_PRECONDITION.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Node;
use crate::support;
use berth_control_plane::agent_client::{self, BearerAuth};
use berth_control_plane::daemon::{Config, Daemon};
use berth_proto::controlplane::v1 as pb;
use pb::node_service_client::NodeServiceClient;
use support::postgres::PrivatePostgres;

const ADMIN: &str = "cluster-admin-token-0123456789";
const ALICE: &str = "cluster-alice-token-0123456789";
const SECRET: &str = "cluster-secret-0123456789abcdefghijklmnop";
const LOST_AFTER_MS: u64 = 1000;

/// A private PostgreSQL with one database, and the token files every node reads.
struct Cluster {
    _pg: PrivatePostgres,
    db: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new(database: &str) -> Cluster {
        let pg = PrivatePostgres::start();
        let db = pg.database(database);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens"), format!("{ADMIN}\n{ALICE} bots=alice\n")).unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        Cluster { _pg: pg, db, dir }
    }

    /// Node `n`: its own containerd, state, bridge and subnet, listening on 127.0.0.`n`.
    fn node(&self, n: u8) -> Node {
        let mut node = Node::new(n);
        node.config = Config {
            cluster: true,
            node_name: format!("node-{n}"),
            database_url: Some(self.db.clone()),
            listen_tcp: Some(format!("127.0.0.{n}:0").parse().unwrap()),
            api_token_file: Some(self.dir.path().join("tokens")),
            cluster_token_file: Some(self.dir.path().join("secret")),
            node_lost_after_ms: LOST_AFTER_MS,
            node_memory_bytes: u64::from(n) << 33,
            node_labels: vec![format!("zone=z{n}")],
            ..node.config.clone()
        };
        node
    }
}

async fn nodes(d: &Daemon, token: Option<&str>) -> Result<Vec<pb::Node>, tonic::Status> {
    let ch = agent_client::channel(d.socket().to_str().unwrap()).await.unwrap();
    let auth = token.map_or_else(BearerAuth::none, |t| BearerAuth::new(t).unwrap());
    let mut c = NodeServiceClient::with_interceptor(ch, auth);
    Ok(c.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes)
}

async fn cordon(d: &Daemon, token: Option<&str>, name: &str, on: bool) -> Result<(), tonic::Status> {
    let ch = agent_client::channel(d.socket().to_str().unwrap()).await.unwrap();
    let auth = token.map_or_else(BearerAuth::none, |t| BearerAuth::new(t).unwrap());
    let mut c = NodeServiceClient::with_interceptor(ch, auth);
    if on {
        c.cordon_node(pb::CordonNodeRequest { name: name.into() }).await?;
    } else {
        c.uncordon_node(pb::UncordonNodeRequest { name: name.into() }).await?;
    }
    Ok(())
}

fn state(list: &[pb::Node], name: &str) -> pb::NodeState {
    list.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("{name} not listed: {list:?}")).state()
}

fn cli(d: &Daemon, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_berth")).env("BERTH_ADDR", d.socket()).args(args).output().unwrap();
    assert!(o.status.success(), "berth {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_heartbeat_cordon_and_a_silent_one_is_lost_until_it_returns() {
    let c = Cluster::new("cluster");
    let (mut n1, mut n2) = (c.node(1), c.node(2));
    for n in [&mut n1, &mut n2] {
        n.config.cluster_subnet = "10.252.0.0/16".into();
        n.config.node_subnet_prefix = 24;
    }
    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();

    // Each node took its own share of the cluster's range, and its bots' addresses come from it.
    let subnets: Vec<(String, String)> =
        nodes(&d1, None).await.unwrap().into_iter().map(|n| (n.name, n.subnet)).collect();
    assert_eq!(
        subnets,
        [("node-1".to_string(), "10.252.0.0/24".to_string()), ("node-2".to_string(), "10.252.1.0/24".to_string())]
    );
    let req = pb::CreateBotRequest { name: "n2bot".into(), node: "node-2".into(), ..Default::default() };
    let b = bots_client(&d1).await.create_bot(req).await.unwrap().into_inner().bot.unwrap();
    assert!(b.ip.starts_with("10.252.1."), "{b:?}");
    let req = pb::DeleteBotRequest { name: "n2bot".into(), ..Default::default() };
    bots_client(&d1).await.delete_bot(req).await.unwrap();

    // Each node sees both, itself marked, with what it offers.
    for (d, me) in [(&d1, "node-1"), (&d2, "node-2")] {
        let list = nodes(d, None).await.unwrap();
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2"]);
        for n in &list {
            assert_eq!(n.state(), pb::NodeState::Active, "{n:?}");
            assert_eq!(n.this_node, n.name == me);
            assert!(n.heartbeat_age_ms < LOST_AFTER_MS as i64, "{n:?}");
        }
        let two = list.iter().find(|n| n.name == "node-2").unwrap();
        let address = d2.tcp_addr().unwrap().to_string();
        assert_eq!((two.address.as_str(), two.memory_bytes), (address.as_str(), 16 << 30));
        assert_eq!(two.labels.get("zone").map(String::as_str), Some("z2"));
        assert!(two.cpu_millis >= 1000, "the host's CPUs: {two:?}");
    }

    // Cordons: any node, unscoped tokens only; an unknown node is NOT_FOUND.
    cordon(&d1, None, "node-2", true).await.unwrap();
    assert_eq!(state(&nodes(&d2, None).await.unwrap(), "node-2"), pb::NodeState::Cordoned);
    let denied = cordon(&d1, Some(ALICE), "node-2", false).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(nodes(&d1, Some(ALICE)).await.is_ok(), "a scoped token may list nodes");
    let missing = cordon(&d1, Some(ADMIN), "node-9", true).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    cordon(&d2, Some(ADMIN), "node-2", false).await.unwrap();
    assert_eq!(state(&nodes(&d1, None).await.unwrap(), "node-2"), pb::NodeState::Active);

    // A second live node under a taken name (another address) is refused, naming the holder.
    let mut twin = c.node(3);
    twin.config.node_name = "node-1".into();
    let e = Daemon::start(twin.config.clone()).await.err().expect("a second node-1");
    let e = format!("{:#}", anyhow::Error::from(e));
    let holder = d1.tcp_addr().unwrap();
    assert!(e.contains(&format!("node_name `node-1` belongs to a live node at {holder}")), "{e}");

    // node-2 stops heartbeating: node-1 marks it lost once its heartbeat is older than LOST_AFTER_MS.
    let table = cli(&d1, &["node", "ls"]);
    assert!(table.contains("node-1*") && table.contains("node-2 ") && table.contains("zone=z2"), "{table}");
    d2.stop().await;
    let stopped = Instant::now();
    let lost = loop {
        let list = nodes(&d1, None).await.unwrap();
        let two = list.iter().find(|n| n.name == "node-2").unwrap().clone();
        if two.state() == pb::NodeState::Lost {
            break two;
        }
        assert!(stopped.elapsed() < Duration::from_millis(LOST_AFTER_MS * 5), "node-2 never lost: {two:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("node-2 lost {} ms after it stopped", stopped.elapsed().as_millis());
    assert!(lost.heartbeat_age_ms >= LOST_AFTER_MS as i64, "marked lost too early: {lost:?}");
    assert!(lost.lost_since_ms > 0);
    assert_eq!(state(&nodes(&d1, None).await.unwrap(), "node-1"), pb::NodeState::Active);
    assert!(cli(&d1, &["node", "ls"]).contains("lost"));

    // It comes back under its name and address: active again at its first heartbeat.
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();
    let back = nodes(&d1, None).await.unwrap();
    assert_eq!(back.iter().find(|n| n.name == "node-2").unwrap().subnet, "10.252.1.0/24", "kept across a restart");
    assert_eq!(state(&back, "node-2"), pb::NodeState::Active, "{back:?}");
    assert_eq!(back.iter().find(|n| n.name == "node-2").unwrap().lost_since_ms, 0);
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_needs_postgres_and_a_single_node_has_no_nodes() {
    let mut node = Node::new(4);
    node.config.cluster = true;
    let e = Daemon::start(node.config.clone()).await.err().expect("cluster mode on SQLite");
    let e = format!("{:#}", anyhow::Error::from(e));
    assert!(e.contains("cluster: needs database_url") && e.contains("postgres://"), "{e}");

    node.config.cluster = false;
    let d = Daemon::start(node.config.clone()).await.unwrap();
    let s = nodes(&d, None).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("not part of a cluster"), "{s:?}");
    d.stop().await;
}

async fn bots_client(d: &Daemon) -> pb::bot_service_client::BotServiceClient<tonic::transport::Channel> {
    pb::bot_service_client::BotServiceClient::new(agent_client::channel(d.socket().to_str().unwrap()).await.unwrap())
}

async fn get(d: &Daemon, name: &str) -> pb::Bot {
    let r = bots_client(d).await.get_bot(pb::GetBotRequest { name: name.into(), ..Default::default() }).await;
    r.unwrap().into_inner().bot.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bot_has_one_owner_and_only_its_owner_runs_or_changes_it() {
    let c = Cluster::new("owners");
    let (n1, n2) = (c.node(1), c.node(2));

    // A single-node berthd made a bot on this database: node-1, joining, takes it as its own.
    let mut single = n1.config.clone();
    single.cluster = false;
    let d = Daemon::start(single).await.unwrap();
    let req = pb::CreateBotRequest { name: "old".into(), ..Default::default() };
    bots_client(&d).await.create_bot(req).await.unwrap();
    assert_eq!(get(&d, "old").await.node, "", "no owner outside a cluster");
    d.stop().await;

    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();
    assert_eq!(get(&d1, "old").await.node, "node-1");
    let memory = 256u64 << 20;
    let req = pb::CreateBotRequest {
        name: "b1".into(),
        node: "node-1".into(),
        resources: Some(pb::Resources { memory_bytes: memory, ..Default::default() }),
        ..Default::default()
    };
    let b1 = bots_client(&d1).await.create_bot(req).await.unwrap().into_inner().bot.unwrap();
    assert_eq!(b1.node, "node-1");
    let pid = get(&d1, "b1").await.pid;
    assert!(pid > 0);

    // Any node reads it, with its owner; the node list counts it against node-1.
    let seen = get(&d2, "b1").await;
    assert_eq!((seen.node.as_str(), seen.state()), ("node-1", pb::BotState::Running));
    let table = cli(&d2, &["bot", "ls"]);
    assert!(table.contains("NODE") && table.lines().any(|l| l.starts_with("b1 ") && l.contains("node-1")), "{table}");
    let list = nodes(&d2, None).await.unwrap();
    let one = list.iter().find(|n| n.name == "node-1").unwrap();
    assert_eq!(one.bots, 2, "{one:?}");
    assert!(one.memory_reserved_bytes >= memory, "{one:?}");
    assert_eq!(list.iter().find(|n| n.name == "node-2").unwrap().bots, 0);

    // node-2's reconciler leaves it alone: no container for it in node-2's containerd, and node-1's task
    // is the same one after several passes of both.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!n2.containerd.ctr_ls("containers").iter().any(|c| c.contains("b1")));
    assert_eq!(get(&d1, "b1").await.pid, pid, "the bot was restarted");
    assert_eq!(get(&d2, "b1").await.state(), pb::BotState::Running);

    for name in ["b1", "old"] {
        let req = pb::DeleteBotRequest { name: name.into(), ..Default::default() };
        bots_client(&d1).await.delete_bot(req).await.unwrap();
    }
    d1.stop().await;
    d2.stop().await;
}

async fn data_client(d: &Daemon) -> pb::data_service_client::DataServiceClient<tonic::transport::Channel> {
    let ch = agent_client::channel(d.socket().to_str().unwrap()).await.unwrap();
    pb::data_service_client::DataServiceClient::new(ch)
}

/// The agent protocol of `bot` through `d`'s socket, with `token` if given.
async fn agent(d: &Daemon, bot: &str, token: Option<&str>) -> agent_client::AgentClient {
    let ch = agent_client::channel(d.socket().to_str().unwrap()).await.unwrap();
    let auth = token.map_or_else(BearerAuth::none, |t| BearerAuth::new(t).unwrap());
    agent_client::agent_on(ch, auth.with_bot(bot).unwrap())
}

/// A call straight to `d`'s TCP listener as a peer would make it: `secret` and `scope` as given.
async fn as_peer(d: &Daemon, secret: &str, scope: Option<&str>, bot: &str) -> Result<(), tonic::Status> {
    use berth_proto::agent::v1 as apb;
    let ch = agent_client::channel(&format!("http://{}", d.tcp_addr().unwrap())).await.unwrap();
    let mut req = tonic::Request::new(apb::VersionRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    req.metadata_mut().insert("berth-bot", bot.parse().unwrap());
    if let Some(s) = scope {
        req.metadata_mut().insert("berth-forwarded-scope", s.parse().unwrap());
    }
    apb::container_service_client::ContainerServiceClient::new(ch).version(req).await.map(drop)
}

async fn echo(d: &Daemon, bot: &str) -> Result<String, tonic::Status> {
    let mut a = agent(d, bot, None).await;
    let r = crate::common::run(&mut a, crate::common::argv(&["sh", "-c", "echo hi from $(hostname); exit 3"])).await?;
    assert_eq!(r.code(), Some(3));
    Ok(r.stdout_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_bot_with_the_callers_scope_and_a_lost_owner_fails_fast() {
    use berth_proto::agent::v1 as apb;
    use tokio_stream::StreamExt;
    let c = Cluster::new("routing");
    let (n1, n2) = (c.node(1), c.node(2));
    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();
    for name in ["alice", "bob"] {
        let req = pb::CreateBotRequest { name: name.into(), node: "node-1".into(), ..Default::default() };
        bots_client(&d1).await.create_bot(req).await.unwrap();
    }
    let alice_pid = get(&d1, "alice").await.pid;

    // Through node-2: exec (streams both ways), files, lifecycle, snapshots, export and import, an MCP
    // session, all reaching the bots on node-1.
    assert!(echo(&d2, "alice").await.unwrap().starts_with("hi from"));
    let mut a = agent(&d2, "alice", None).await;
    let write =
        apb::WriteFileRequest { path: "/data/x.txt".into(), content: b"forwarded".to_vec(), ..Default::default() };
    a.write_file(write).await.unwrap();
    let mut a1 = agent(&d1, "alice", None).await;
    let read = a1.read_file(apb::ReadFileRequest { path: "/data/x.txt".into(), ..Default::default() }).await.unwrap();
    assert_eq!(read.into_inner().content, b"forwarded");
    let dst = c.dir.path().join("x.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env("BERTH_ADDR", d2.socket())
        .args(["cp", "alice:/data/x.txt", dst.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&dst).unwrap(), b"forwarded", "a download through node-2");

    let watch = pb::WatchEventsRequest { name: "bob".into(), after_id: None };
    let mut events = bots_client(&d2).await.watch_events(watch).await.unwrap().into_inner();
    let stop = pb::StopBotRequest { name: "bob".into(), ..Default::default() };
    let stopped = bots_client(&d2).await.stop_bot(stop).await.unwrap().into_inner().bot.unwrap();
    let event = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        if e.state() == pb::BotState::Stopped {
            break e;
        }
    };
    assert_eq!(event.name, "bob", "bob's events, watched through node-2, come from node-1");
    assert_eq!(stopped.state(), pb::BotState::Stopped);
    assert_eq!(get(&d1, "bob").await.state(), pb::BotState::Stopped);
    bots_client(&d2).await.start_bot(pb::StartBotRequest { name: "bob".into() }).await.unwrap();
    let bob = get(&d2, "bob").await;
    assert_eq!((bob.state(), bob.node.as_str()), (pb::BotState::Running, "node-1"));
    assert!(bob.pid > 0, "GetBot through node-2 answers with the owner's task: {bob:?}");
    assert!(!n2.containerd.ctr_ls("containers").iter().any(|c| c.contains("bob")));

    let snap = pb::CreateSnapshotRequest { bot: "alice".into(), name: "s1".into() };
    data_client(&d2).await.create_snapshot(snap).await.unwrap();
    let list = data_client(&d2).await.list_snapshots(pb::ListSnapshotsRequest { bot: "alice".into() }).await;
    assert!(list.unwrap().into_inner().snapshots.iter().any(|s| s.name == "s1"));
    let export = pb::ExportDataRequest { bot: "alice".into(), compression: pb::Compression::Zstd.into() };
    let mut chunks = data_client(&d2).await.export_data(export).await.unwrap().into_inner();
    let (mut archive, mut summary) = (Vec::new(), None);
    while let Some(chunk) = chunks.message().await.unwrap() {
        archive.extend_from_slice(&chunk.data);
        summary = summary.or(chunk.summary);
    }
    assert!(summary.unwrap().entries >= 1);
    let first = pb::ImportDataChunk { bot: "bob".into(), replace: true, ..Default::default() };
    let rest = archive.chunks(64 << 10).map(|d| pb::ImportDataChunk { data: d.to_vec(), ..Default::default() });
    let chunks: Vec<_> = std::iter::once(first).chain(rest).collect();
    let imported = data_client(&d2).await.import_data(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    assert!(imported.verified && imported.entries >= 1, "{imported:?}");
    // An import whose request stream breaks (a message over the size limit) fails; it is not taken for
    // a whole archive ending there.
    let first = pb::ImportDataChunk { bot: "bob".into(), unverified: true, ..Default::default() };
    let cut = pb::ImportDataChunk { data: archive[..archive.len() / 2].to_vec(), ..Default::default() };
    let oversized = pb::ImportDataChunk { data: vec![0; 65 << 20], ..Default::default() };
    let chunks = tokio_stream::iter([first, cut, oversized]);
    let e = data_client(&d2).await.import_data(chunks).await.unwrap_err();
    assert!(e.message().contains("the request stream failed"), "{e:?}");
    let mut b1 = agent(&d1, "bob", None).await;
    let read = b1.read_file(apb::ReadFileRequest { path: "/data/x.txt".into(), ..Default::default() }).await.unwrap();
    assert_eq!(read.into_inner().content, b"forwarded", "alice's data imported into bob through node-2");

    let ch = agent_client::channel(d2.socket().to_str().unwrap()).await.unwrap();
    let mut mcp = pb::mcp_service_client::McpServiceClient::new(ch);
    let open = apb::McpOpen { command: "cat".into(), ..Default::default() };
    let frames = [
        pb::McpClientFrame {
            frame: Some(pb::mcp_client_frame::Frame::Connect(pb::McpConnect {
                bot: "alice".into(),
                target: Some(pb::mcp_connect::Target::Command(open)),
                ..Default::default()
            })),
        },
        pb::McpClientFrame { frame: Some(pb::mcp_client_frame::Frame::Message(b"{\"jsonrpc\":\"2.0\"}".to_vec())) },
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for f in frames {
        tx.send(f).await.unwrap();
    }
    let mut session = mcp.mcp_session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let echoed = loop {
        let m = tokio::time::timeout(Duration::from_secs(20), session.next()).await.unwrap().unwrap().unwrap();
        if let Some(apb::mcp_session_response::Frame::Message(m)) = m.frame {
            break m;
        }
    };
    assert_eq!(echoed, b"{\"jsonrpc\":\"2.0\"}");
    drop(tx);

    // Scopes: alice's token reaches alice through node-2 and is refused bob there; the owner checks the
    // forwarded scope again, refuses a peer call without one, and a caller without the cluster secret.
    let mut scoped = agent(&d2, "alice", Some(ALICE)).await;
    scoped.version(apb::VersionRequest {}).await.unwrap();
    let e = agent(&d2, "bob", Some(ALICE)).await.version(apb::VersionRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    as_peer(&d1, SECRET, Some("bots=alice"), "alice").await.unwrap();
    as_peer(&d1, SECRET, Some("all"), "bob").await.unwrap();
    let e = as_peer(&d1, SECRET, Some("bots=alice"), "bob").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = as_peer(&d1, SECRET, None, "bob").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("berth-forwarded-scope"), "{e:?}");
    let e = as_peer(&d1, "not-the-cluster-secret-0123456789abcdef", Some("all"), "bob").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = as_peer(&d1, ADMIN, Some("all"), "bob").await;
    assert!(e.is_ok(), "an API token is an API token; the scope header means nothing with it: {e:?}");
    let e = as_peer(&d1, ALICE, Some("all"), "bob").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "a scope header never widens a token: {e:?}");

    // node-1 goes away (its bots keep running): through node-2 their calls fail UNAVAILABLE naming it,
    // at once; once it is marked lost, saying so, and its bots show it (get, ls, events, health,
    // metrics). node-2's own work goes on.
    let mut all_events =
        bots_client(&d2).await.watch_events(pb::WatchEventsRequest::default()).await.unwrap().into_inner();
    d1.stop().await;
    let started = Instant::now();
    let e = echo(&d2, "alice").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("node-1"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    let lost = Instant::now();
    while state(&nodes(&d2, None).await.unwrap(), "node-1") != pb::NodeState::Lost {
        assert!(lost.elapsed() < Duration::from_millis(LOST_AFTER_MS * 5), "node-1 never marked lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let e = echo(&d2, "alice").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("node `node-1`, lost"), "{e:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    eprintln!("a call for a bot on a lost node failed in {took:?}");
    let shown = get(&d2, "alice").await;
    assert!(shown.node_lost_since_ms > 0 && shown.state() == pb::BotState::Running, "{shown:?}");
    let table = cli(&d2, &["bot", "ls"]);
    assert!(table.lines().any(|l| l.starts_with("alice ") && l.contains("node-lost")), "{table}");
    let event = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), all_events.message()).await.unwrap().unwrap().unwrap();
        if e.kind == "node_lost" && e.name == "alice" {
            break e;
        }
    };
    assert!(event.message.contains("node `node-1` is lost"), "{event:?}");
    {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let ch = agent_client::channel(d2.socket().to_str().unwrap()).await.unwrap();
        let mut h = HealthClient::new(ch);
        let check = |s: &str| HealthCheckRequest { service: s.into() };
        let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
        assert_eq!(status(h.check(check("node/node-1")).await.unwrap()), 2, "NOT_SERVING");
        assert_eq!(status(h.check(check("node/node-2")).await.unwrap()), 1, "SERVING");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", d2.metrics_addr().unwrap())).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("berth_cluster_nodes{state=\"lost\"} 1"), "{metrics}");
    let req = pb::CreateBotRequest { name: "local".into(), ..Default::default() };
    let local = bots_client(&d2).await.create_bot(req).await.unwrap().into_inner().bot.unwrap();
    assert_eq!(local.node, "node-2", "placed on the one node not lost");
    assert!(echo(&d2, "local").await.unwrap().starts_with("hi from"));

    // node-1 is back: its bots were never restarted, and node-2 reaches them again.
    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    assert!(echo(&d2, "alice").await.unwrap().starts_with("hi from"));
    assert_eq!(get(&d1, "alice").await.pid, alice_pid, "alice was restarted");

    for (d, name) in [(&d1, "alice"), (&d1, "bob"), (&d2, "local")] {
        let req = pb::DeleteBotRequest { name: name.into(), ..Default::default() };
        bots_client(d).await.delete_bot(req).await.unwrap();
    }
    d1.stop().await;
    d2.stop().await;
}

async fn create(
    d: &Daemon,
    name: &str,
    mib: u64,
    node: &str,
    selector: &[(&str, &str)],
) -> Result<pb::Bot, tonic::Status> {
    let req = pb::CreateBotRequest {
        name: name.into(),
        node: node.into(),
        node_selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        resources: Some(pb::Resources { memory_bytes: mib << 20, ..Default::default() }),
        ..Default::default()
    };
    Ok(bots_client(d).await.create_bot(req).await?.into_inner().bot.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_are_placed_by_memory_left_labels_and_cordons_and_a_name_is_taken_once() {
    let c = Cluster::new("placement");
    let registry = crate::support::registry::PrivateRegistry::start(None);
    registry.push_archive(&crate::support::containerd::minimal_image(), "bots/minimal", "v1").await;
    let (mut n1, mut n2) = (c.node(1), c.node(2));
    for n in [&mut n1, &mut n2] {
        n.config.insecure_registries = vec![registry.addr.clone()];
    }
    n1.config.node_memory_bytes = 3 << 30;
    n1.config.node_max_bots = 3;
    n2.config.node_memory_bytes = 4 << 30;
    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();

    // Through node-1, 1 GiB each: the most memory left wins (4 GiB against 3), then at equal memory
    // the fewest bots; each lands in its node's containerd only.
    let mut placed = Vec::new();
    for name in ["p1", "p2", "p3", "p4"] {
        placed.push(create(&d1, name, 1024, "", &[]).await.unwrap().node);
    }
    assert_eq!(placed, ["node-2", "node-1", "node-2", "node-1"]);
    for (name, node) in [("p1", &n2), ("p2", &n1)] {
        assert!(node.containerd.ctr_ls("containers").iter().any(|c| c.contains(name)), "{name}");
    }
    assert!(!n1.containerd.ctr_ls("containers").iter().any(|c| c.contains("p1")));

    // A selector picks among the nodes carrying the labels, even with less memory left.
    assert_eq!(create(&d2, "z1", 512, "", &[("zone", "z1")]).await.unwrap().node, "node-1");
    // node-1 holds its most bots now; naming it, or leaving only it, is RESOURCE_EXHAUSTED saying why.
    let e = create(&d2, "full", 256, "node-1", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("holds its most bots (3, node_max_bots)"), "{e:?}");
    cordon(&d1, None, "node-2", true).await.unwrap();
    let e = create(&d1, "nowhere", 256, "", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("node-1: holds its most bots") && e.message().contains("node-2: cordoned"), "{e:?}");
    cordon(&d1, None, "node-2", false).await.unwrap();
    let e = create(&d1, "huge", 3072, "", &[]).await.unwrap_err();
    assert!(e.message().contains("node-2: 2048 MiB of memory left, the bot's limit is 3072 MiB"), "{e:?}");
    let e = create(&d1, "nonode", 256, "node-9", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // An image pulled through node-1 is pulled by node-2 when a bot using it is placed there.
    let reference = format!("{}/bots/minimal:v1", registry.addr);
    let mut images = pb::image_service_client::ImageServiceClient::new(
        agent_client::channel(d1.socket().to_str().unwrap()).await.unwrap(),
    );
    images.pull_image(pb::PullImageRequest { reference: reference.clone(), ..Default::default() }).await.unwrap();
    let req = pb::CreateBotRequest {
        name: "pulled".into(),
        image: reference.clone(),
        node: "node-2".into(),
        resources: Some(pb::Resources { memory_bytes: 256 << 20, ..Default::default() }),
        ..Default::default()
    };
    let pulled = bots_client(&d1).await.create_bot(req).await.unwrap().into_inner().bot.unwrap();
    assert_eq!((pulled.node.as_str(), pulled.image.as_str()), ("node-2", reference.as_str()));
    let missing = pb::CreateBotRequest {
        name: "nosuch".into(),
        image: format!("{}/bots/none:v1", registry.addr),
        node: "node-2".into(),
        resources: Some(pb::Resources { memory_bytes: 256 << 20, ..Default::default() }),
        ..Default::default()
    };
    let e = bots_client(&d1).await.create_bot(missing).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("is not on node `node-2`") && e.message().contains("pulling it there failed"),
        "{e:?}"
    );

    // The CLI: --node-selector, and where the bot went.
    let out = cli(&d1, &["bot", "create", "cli1", "--memory", "256M", "--node-selector", "zone=z2"]);
    assert_eq!(out.trim(), "cli1 running on node-2");

    // The same name through both nodes at once, each its own owner: one bot, and the other create says
    // it exists, leaving nothing behind.
    let req = pb::DeleteBotRequest { name: "z1".into(), ..Default::default() };
    bots_client(&d2).await.delete_bot(req).await.unwrap();
    let (a, b) = tokio::join!(create(&d1, "twin", 256, "node-1", &[]), create(&d2, "twin", 256, "node-2", &[]));
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one create to win: {other:?}"),
    };
    assert_eq!(lost.code(), tonic::Code::AlreadyExists, "{lost:?}");
    let other = if won.node == "node-1" { &n2 } else { &n1 };
    assert!(!other.containerd.ctr_ls("containers").iter().any(|c| c.contains("twin")), "a container left behind");
    assert_eq!(get(&d2, "twin").await.node, won.node);

    for name in ["p1", "p2", "p3", "p4", "cli1", "twin", "pulled"] {
        let req = pb::DeleteBotRequest { name: name.into(), ..Default::default() };
        bots_client(&d2).await.delete_bot(req).await.unwrap();
    }
    d1.stop().await;
    d2.stop().await;
}
