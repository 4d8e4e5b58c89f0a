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
const LOST_AFTER_MS: u64 = 1000;

fn clustered(n: u8, db: &str, tokens: &std::path::Path) -> Node {
    let mut node = Node::new(n);
    node.config = Config {
        cluster: true,
        node_name: format!("node-{n}"),
        database_url: Some(db.into()),
        listen_tcp: Some(format!("127.0.0.{n}:0").parse().unwrap()),
        advertise_addr: format!("node-{n}.test:7443"),
        api_token_file: Some(tokens.into()),
        node_lost_after_ms: LOST_AFTER_MS,
        node_memory_bytes: u64::from(n) << 30,
        node_labels: vec![format!("zone=z{n}")],
        ..node.config.clone()
    };
    node
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
    let pg = PrivatePostgres::start();
    let db = pg.database("cluster");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ADMIN}\n{ALICE} bots=alice\n")).unwrap();
    let (n1, n2) = (clustered(1, &db, &tokens), clustered(2, &db, &tokens));
    let d1 = Daemon::start(n1.config.clone()).await.unwrap();
    let d2 = Daemon::start(n2.config.clone()).await.unwrap();

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
        assert_eq!((two.address.as_str(), two.memory_bytes), ("node-2.test:7443", 2 << 30));
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
    let mut twin = clustered(3, &db, &tokens);
    twin.config.node_name = "node-1".into();
    let e = Daemon::start(twin.config.clone()).await.err().expect("a second node-1");
    let e = format!("{:#}", anyhow::Error::from(e));
    assert!(e.contains("node_name `node-1` belongs to a live node at node-1.test:7443"), "{e}");

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
    let pg = PrivatePostgres::start();
    let db = pg.database("owners");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ADMIN}\n")).unwrap();
    let (n1, n2) = (clustered(1, &db, &tokens), clustered(2, &db, &tokens));

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

    // Another node neither changes it nor reaches its agent: it names the owner.
    let stop = bots_client(&d2).await.stop_bot(pb::StopBotRequest { name: "b1".into(), ..Default::default() }).await;
    let e = stop.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("belongs to node `node-1`"), "{e:?}");
    let ch = agent_client::channel(d2.socket().to_str().unwrap()).await.unwrap();
    let mut a = agent_client::agent_on(ch, BearerAuth::none().with_bot("b1").unwrap());
    let e = crate::common::run(&mut a, crate::common::argv(&["true"])).await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to node `node-1`"), "{e:#}");

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
