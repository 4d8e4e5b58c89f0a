//! A three-node cluster of real berthd processes: three private containerds, state directories, bridges
//! and subnets (carved from one cluster range), on 127.0.0.1-3 with TLS (each node its own certificate
//! from one CA), one private PostgreSQL. Bots created through node 1 land on all three by placement;
//! exec, `berth cp`, the MCP stdio bridge and HTTP front-end, and export/import through every node reach
//! every bot; a scoped token works for its bot through every node and nowhere else; SIGKILL node 3: it is
//! lost within `node_lost_after` plus a heartbeat, its bots' calls fail UNAVAILABLE naming it in under a
//! second while nodes 1 and 2 serve theirs, and once restarted it is active with its bots' tasks untouched.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{argv, run};
use crate::support::berthd::TestBerthd;
use crate::support::cluster::tls_node;
use crate::support::postgres::PrivatePostgres;
use crate::support::registry::localhost_certificate;
use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use tonic::transport::Channel;

const ADMIN: &str = "three-admin-token-0123456789";
const ALICE: &str = "three-alice-token-0123456789";
const SECRET: &str = "three-cluster-secret-0123456789abcdefghijkl";
const LOST_AFTER_MS: u64 = 2000;
const BOTS: usize = 30;

struct Node {
    b: TestBerthd,
    addr: String,
}

fn start(n: u8, db: &str, files: &Path) -> Node {
    let extra = [
        ("--node-memory-bytes", (8u64 << 30).to_string()),
        ("--cluster-subnet", "10.253.0.0/16".into()),
        ("--mcp-listen", format!("127.0.0.{n}:0")),
        ("--reconcile-interval-ms", "1000".into()),
    ];
    let (b, addr) = tls_node(n, db, files, LOST_AFTER_MS, &extra);
    Node { b, addr }
}

/// A TLS channel to a node's TCP listener, as a remote client would open it.
async fn tls(node: &Node, ca: &Path) -> Channel {
    let pem = std::fs::read(ca).unwrap();
    agent_client::channel_with_ca(&format!("https://{}", node.addr), Some(&pem)).await.unwrap()
}

async fn bots(
    node: &Node,
    ca: &Path,
) -> pb::bot_service_client::BotServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerAuth>> {
    pb::bot_service_client::BotServiceClient::with_interceptor(tls(node, ca).await, BearerAuth::new(ADMIN).unwrap())
}

async fn agent(node: &Node, ca: &Path, token: &str, bot: &str) -> AgentClient {
    agent_client::agent_on(tls(node, ca).await, BearerAuth::new(token).unwrap().with_bot(bot).unwrap())
}

async fn bot(node: &Node, ca: &Path, name: &str) -> pb::Bot {
    let req = pb::GetBotRequest { name: name.into(), ..Default::default() };
    bots(node, ca).await.get_bot(req).await.unwrap().into_inner().bot.unwrap()
}

/// `berth` over TLS to a node with the admin token.
fn cli(node: &Node, ca: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    c.env("BERTH_ADDR", format!("https://{}", node.addr)).env("BERTH_CA", ca).env("BERTH_TOKEN", ADMIN).args(args);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn node_state(node: &Node, ca: &Path, name: &str) -> pb::NodeState {
    let ch = tls(node, ca).await;
    let mut c = pb::node_service_client::NodeServiceClient::with_interceptor(ch, BearerAuth::new(ADMIN).unwrap());
    let list = c.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes;
    list.iter().find(|n| n.name == name).unwrap().state()
}

/// The next `n` events of a watch (within 30 s).
async fn events_until(w: &mut tonic::Streaming<pb::BotEvent>, n: usize) -> Vec<pb::BotEvent> {
    let mut v = Vec::new();
    while v.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(30), w.message()).await;
        v.push(e.expect("an event in time").unwrap().expect("the watch is open"));
    }
    v
}

/// A minimal MCP server in sh: answers every request with an empty result.
const SH_SERVER: &str = r#"while IFS= read -r l; do id=$(printf '%s' "$l" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p'); [ -n "$id" ] && printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"sh","version":"1"}}}\n' "$id"; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tls_place_route_and_survive_one_killed() {
    let pg = PrivatePostgres::start();
    let db = pg.database("three");
    let files = tempfile::tempdir().unwrap();
    let files_path: PathBuf = files.path().into();
    localhost_certificate(&files_path);
    std::fs::write(files_path.join("tokens"), format!("{ADMIN}\n{ALICE} bots=alice\n")).unwrap();
    std::fs::write(files_path.join("secret"), format!("{SECRET}\n")).unwrap();
    let ca = files_path.join("ca.crt");
    let mut nodes: Vec<Node> = (1..=3).map(|n| start(n, &db, &files_path)).collect();
    let mut watch2 =
        bots(&nodes[1], &ca).await.watch_events(pb::WatchEventsRequest::default()).await.unwrap().into_inner();

    // 30 bots created through node 1 land on all three (equal capacity: the most memory left, then the
    // fewest bots), each in its owner's subnet.
    let mut placed = std::collections::BTreeMap::<String, Vec<String>>::new();
    for i in 0..BOTS {
        let name = if i == 0 { "alice".to_string() } else { format!("b{i:02}") };
        let req = pb::CreateBotRequest {
            name: name.clone(),
            resources: Some(pb::Resources { memory_bytes: 128 << 20, ..Default::default() }),
            ..Default::default()
        };
        let b = bots(&nodes[0], &ca).await.create_bot(req).await.unwrap().into_inner().bot.unwrap();
        placed.entry(b.node.clone()).or_default().push(name);
    }
    let counts: Vec<usize> = placed.values().map(Vec::len).collect();
    assert_eq!(counts, [10, 10, 10], "{placed:?}");
    let one_per_node: Vec<String> = placed.values().map(|v| v[v.len() - 1].clone()).collect();

    // WatchEvents on node 2 sees every node's creates, in one order, each from its owner.
    let owner: std::collections::HashMap<&str, &str> =
        placed.iter().flat_map(|(node, names)| names.iter().map(move |n| (n.as_str(), node.as_str()))).collect();
    let seen = events_until(&mut watch2, BOTS * 4).await;
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for name in owner.keys() {
        let kinds: Vec<&str> = seen.iter().filter(|e| e.name == *name).map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["creating", "created", "starting", "started"], "{name}");
        assert!(seen.iter().filter(|e| e.name == *name).all(|e| e.node == owner[name]), "{name}: {seen:?}");
    }
    // Node 2 restarts; meanwhile bots of nodes 1 and 3 are stopped and started. Resumed from the last id it
    // gave, node 2 gives what node 1 gives from there: no gap, no duplicate.
    let last = seen.last().unwrap().id;
    nodes[1].b.halt(libc::SIGKILL);
    for name in [&placed["node-1"][0], &placed["node-3"][0]] {
        let c = &mut bots(&nodes[0], &ca).await;
        c.stop_bot(pb::StopBotRequest { name: name.clone(), ..Default::default() }).await.unwrap();
        c.start_bot(pb::StartBotRequest { name: name.clone() }).await.unwrap();
    }
    nodes[1].b.spawn();
    let resume = pb::WatchEventsRequest { name: String::new(), after_id: Some(last) };
    let touched = [placed["node-1"][0].clone(), placed["node-3"][0].clone()];
    // Node 1's own view, until both bots are started again (node 2's loss may be told in between).
    let mut truth = bots(&nodes[0], &ca).await.watch_events(resume.clone()).await.unwrap().into_inner();
    let mut expected = Vec::new();
    while expected.iter().filter(|e: &&pb::BotEvent| e.kind == "started").count() < 2 {
        expected.extend(events_until(&mut truth, 1).await);
    }
    let mut resumed = bots(&nodes[1], &ca).await.watch_events(resume).await.unwrap().into_inner();
    let resumed = events_until(&mut resumed, expected.len()).await;
    assert_eq!(resumed, expected);
    let kinds: Vec<(&str, &str)> = resumed
        .iter()
        .filter(|e| touched.contains(&e.name) && (e.kind == "stopped" || e.kind == "started"))
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    let [n1, n3] = [touched[0].as_str(), touched[1].as_str()];
    assert_eq!(kinds, [(n1, "stopped"), (n1, "started"), (n3, "stopped"), (n3, "started")]);
    assert_eq!(resumed[0].id, last + 1, "the next id after the last seen");
    for (i, name) in one_per_node.iter().enumerate() {
        let b = bot(&nodes[0], &ca, name).await;
        assert!(b.ip.starts_with("10.253."), "{b:?}");
        assert_eq!(b.node, format!("node-{}", i + 1));
    }

    // Through every node, every node's bot: exec, and a file written there read back through the next.
    for (i, via) in nodes.iter().enumerate() {
        for target in &one_per_node {
            let mut a = agent(via, &ca, ADMIN, target).await;
            let r = run(&mut a, argv(&["sh", "-c", &format!("echo {i} > /data/from-{i}; cat /data/from-{i}")])).await;
            assert_eq!(r.unwrap().stdout_str().trim(), i.to_string(), "{target} via node-{}", i + 1);
        }
        let target = &one_per_node[(i + 1) % 3];
        let dst = files_path.join(format!("cp-{i}"));
        let (ok, _, err) = cli(via, &ca, &["cp", &format!("{target}:/data/from-{i}"), dst.to_str().unwrap()], None);
        assert!(ok, "berth cp via node-{}: {err}", i + 1);
        assert_eq!(std::fs::read_to_string(&dst).unwrap().trim(), i.to_string());
    }

    // The MCP stdio bridge through node 2 to node 3's bot, and the HTTP front-end of node 1 to it.
    let target = &one_per_node[2];
    let (ok, out, err) =
        cli(&nodes[1], &ca, &["mcp", target, "--", "cat"], Some("{\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n"));
    assert!(ok && out.contains("\"method\":\"x\""), "{out} {err}");
    let (ok, _, err) = cli(&nodes[2], &ca, &["mcp-server", "add", target, "sh", "--", "sh", "-c", SH_SERVER], None);
    assert!(ok, "{err}");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = reqwest::Client::new()
        .post(format!("http://{}/bots/{target}/mcp/sh", nodes[0].b.mcp_addr()))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(init)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success() && body.contains("\"serverInfo\"") && body.contains("\"id\":1"), "{status} {body}");

    // Export node 3's bot through node 1; import it into node 2's bot through node 3.
    let mut data = pb::data_service_client::DataServiceClient::with_interceptor(
        tls(&nodes[0], &ca).await,
        BearerAuth::new(ADMIN).unwrap(),
    );
    let export = pb::ExportDataRequest { bot: one_per_node[2].clone(), compression: pb::Compression::Zstd.into() };
    let mut chunks = data.export_data(export).await.unwrap().into_inner();
    let mut archive = Vec::new();
    while let Some(c) = chunks.message().await.unwrap() {
        archive.extend_from_slice(&c.data);
    }
    let mut data = pb::data_service_client::DataServiceClient::with_interceptor(
        tls(&nodes[2], &ca).await,
        BearerAuth::new(ADMIN).unwrap(),
    );
    let first = pb::ImportDataChunk { bot: one_per_node[1].clone(), replace: true, ..Default::default() };
    let rest = archive.chunks(1 << 16).map(|d| pb::ImportDataChunk { data: d.to_vec(), ..Default::default() });
    let imported = data.import_data(tokio_stream::iter(std::iter::once(first).chain(rest).collect::<Vec<_>>())).await;
    assert!(imported.unwrap().into_inner().verified);

    // alice's token: alice through every node, nothing else anywhere.
    let other = placed.values().flatten().find(|n| *n != "alice").unwrap().clone();
    for via in &nodes {
        agent(via, &ca, ALICE, "alice").await.version(apb::VersionRequest {}).await.unwrap();
        let e = agent(via, &ca, ALICE, &other).await.version(apb::VersionRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }

    // SIGKILL node 3: lost within node_lost_after plus a heartbeat; its bots fail fast, naming it; the
    // others serve theirs.
    let pids: Vec<(String, u32)> = {
        let mut v = Vec::new();
        for name in &placed["node-3"] {
            v.push((name.clone(), bot(&nodes[0], &ca, name).await.pid));
        }
        v
    };
    assert!(pids.iter().all(|(_, p)| *p > 0), "{pids:?}");
    nodes[2].b.halt(libc::SIGKILL);
    let killed = Instant::now();
    while node_state(&nodes[0], &ca, "node-3").await != pb::NodeState::Lost {
        assert!(killed.elapsed() < Duration::from_millis(LOST_AFTER_MS * 3), "node-3 never marked lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost_after = killed.elapsed();
    eprintln!("node-3 lost {lost_after:?} after SIGKILL (node_lost_after {LOST_AFTER_MS} ms)");
    assert!(lost_after <= Duration::from_millis(LOST_AFTER_MS + LOST_AFTER_MS / 5 + 500), "{lost_after:?}");
    for via in &nodes[..2] {
        let started = Instant::now();
        let mut a = agent(via, &ca, ADMIN, &one_per_node[2]).await;
        let e = run(&mut a, argv(&["true"])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("node `node-3`, lost"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        for target in &one_per_node[..2] {
            let mut a = agent(via, &ca, ADMIN, target).await;
            assert_eq!(run(&mut a, argv(&["true"])).await.unwrap().code(), Some(0));
        }
    }

    // node 3 is back: active, and its bots' tasks are the ones it left.
    nodes[2].b.spawn();
    let back = Instant::now();
    while node_state(&nodes[0], &ca, "node-3").await != pb::NodeState::Active {
        assert!(back.elapsed() < Duration::from_secs(30), "node-3 never active again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, pid) in &pids {
        assert_eq!(bot(&nodes[1], &ca, name).await.pid, *pid, "{name} was restarted");
    }
    let mut a = agent(&nodes[1], &ca, ADMIN, &one_per_node[2]).await;
    assert_eq!(run(&mut a, argv(&["true"])).await.unwrap().code(), Some(0));

    for names in placed.values() {
        for name in names {
            let req = pb::DeleteBotRequest { name: name.clone(), ..Default::default() };
            bots(&nodes[0], &ca).await.delete_bot(req).await.unwrap();
        }
    }
    drop(nodes.drain(..));
}
