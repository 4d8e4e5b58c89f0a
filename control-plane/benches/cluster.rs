//! Cluster benchmarks (not tests), each against a baseline from the same run. Two berthd processes in
//! cluster mode over TLS on 127.0.0.1 and 127.0.0.2, one private PostgreSQL:
//! - the forwarding hop: a unary agent call (`Version`) and an exec round trip to a bot on node 1, sent
//!   through node 2 against sent to node 1 directly (target: under 0.5 ms added at p50);
//! - time to mark a node lost after SIGKILL, against `node_lost_after`;
//! - lifecycle and read calls with the database 5 ms away (a delaying TCP proxy in front of PostgreSQL)
//!   against it on loopback, on a single node; events are written off the request path, and what one
//!   event's write would add on it is measured beside (the same insert the event writer makes).
//!
//! Writes `target/bench/cluster.{json,md}`. Run through `scripts/bench.sh`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use common::{argv, run};
use report::Report;
use support::berthd::TestBerthd;
use support::postgres::PrivatePostgres;
use support::registry::localhost_certificate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bench-admin-token-0123456789";
const SECRET: &str = "bench-cluster-secret-0123456789abcdefghijkl";
const LOST_AFTER_MS: u64 = 2000;
const CALLS: usize = 400;
const EXECS: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async_main());
}

/// Node `n` of the cluster, over TLS on 127.0.0.`n`.
fn node(n: u8, db: &str, files: &Path) -> TestBerthd {
    support::cluster::tls_node(n, db, files, LOST_AFTER_MS, &[]).0
}

async fn agent(b: &TestBerthd, bot: &str) -> AgentClient {
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    agent_client::agent_on(ch, BearerAuth::none().with_bot(bot).unwrap())
}

async fn bots(b: &TestBerthd) -> pb::bot_service_client::BotServiceClient<tonic::transport::Channel> {
    pb::bot_service_client::BotServiceClient::new(agent_client::channel(b.socket.to_str().unwrap()).await.unwrap())
}

/// Times `n` rounds of `f` on each client, alternating so both see the same machine.
async fn alternate<F, Fut>(n: usize, a: &mut AgentClient, b: &mut AgentClient, f: F) -> (Vec<Duration>, Vec<Duration>)
where
    F: Fn(AgentClient) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        f(a.clone()).await;
        ta.push(t.elapsed());
        let t = Instant::now();
        f(b.clone()).await;
        tb.push(t.elapsed());
    }
    (ta, tb)
}

async fn async_main() {
    let mut report = Report::new();
    let pg = PrivatePostgres::start();
    let db = pg.database("bench");
    let files = tempfile::tempdir().unwrap();
    localhost_certificate(files.path());
    std::fs::write(files.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(files.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let n1 = node(1, &db, files.path());
    let mut n2 = node(2, &db, files.path());
    let req = pb::CreateBotRequest { name: "hop".into(), node: "node-1".into(), ..Default::default() };
    bots(&n1).await.create_bot(req).await.unwrap();

    // The hop: the same calls to node 1's bot, through node 2 and straight to node 1.
    let (mut direct, mut via) = (agent(&n1, "hop").await, agent(&n2, "hop").await);
    for _ in 0..50 {
        direct.version(apb::VersionRequest {}).await.unwrap();
        via.version(apb::VersionRequest {}).await.unwrap();
    }
    let (d, v) = alternate(CALLS, &mut direct, &mut via, |mut c| async move {
        c.version(apb::VersionRequest {}).await.unwrap();
    })
    .await;
    report.row("unary agent call (Version) through another node", &v, Some(("to the owner node", &d)));
    let added = report::pct(v.clone()).0.saturating_sub(report::pct(d.clone()).0);
    report.text_row(
        "  added by the hop at p50",
        &format!("{:.3} ms", added.as_secs_f64() * 1e3),
        "target < 0.5 ms",
        "-",
    );
    let (d, v) = alternate(EXECS, &mut direct, &mut via, |mut c| async move {
        assert_eq!(run(&mut c, argv(&["true"])).await.unwrap().code(), Some(0));
    })
    .await;
    report.row("exec round trip through another node", &v, Some(("to the owner node", &d)));
    let added = report::pct(v).0.saturating_sub(report::pct(d).0);
    report.text_row(
        "  added by the hop at p50",
        &format!("{:.3} ms", added.as_secs_f64() * 1e3),
        "target < 0.5 ms",
        "-",
    );

    // Loss: SIGKILL node 2, then how long until node 1 has marked it lost.
    let nodes = |b: &TestBerthd| {
        let path = b.socket.clone();
        async move {
            let ch = agent_client::channel(path.to_str().unwrap()).await.unwrap();
            let mut c = pb::node_service_client::NodeServiceClient::new(ch);
            c.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes
        }
    };
    let mut marks = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(LOST_AFTER_MS)).await;
        n2.halt(libc::SIGKILL);
        let killed = Instant::now();
        loop {
            let list = nodes(&n1).await;
            if list.iter().any(|n| n.name == "node-2" && n.state() == pb::NodeState::Lost) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        marks.push(killed.elapsed());
        n2.spawn();
    }
    let (p50, _) = report::pct(marks.clone());
    report.text_row(
        "SIGKILL to marked lost (n=3)",
        &format!("p50 {} (each: {:?})", report::ms(p50), marks.iter().map(|d| d.as_millis()).collect::<Vec<_>>()),
        &format!("node_lost_after {LOST_AFTER_MS} ms (+ up to a heartbeat, {} ms)", LOST_AFTER_MS / 5),
        &format!("{:.2}x", p50.as_secs_f64() * 1e3 / LOST_AFTER_MS as f64),
    );
    let mut c = bots(&n1).await;
    c.delete_bot(pb::DeleteBotRequest { name: "hop".into(), ..Default::default() }).await.unwrap();
    drop((n1, n2));

    // The database 5 ms away: one single-node berthd on loopback PostgreSQL, one behind the proxy.
    let far_port = delaying_proxy(pg.port, Duration::from_micros(2500)).await;
    let near_url = pg.database("near");
    let near = TestBerthd::start(Some(near_url.clone()));
    let far_db = pg.database("far").replace(&format!(":{}/", pg.port), &format!(":{far_port}/"));
    let far_url = far_db.clone();
    let far = TestBerthd::start(Some(far_db));
    let mut rows = Vec::new();
    for b in [&near, &far] {
        let mut c = bots(b).await;
        let req = pb::CreateBotRequest { name: "life".into(), ..Default::default() };
        c.create_bot(req).await.unwrap();
        let (mut gets, mut cycles) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let t = Instant::now();
            c.get_bot(pb::GetBotRequest { name: "life".into(), ..Default::default() }).await.unwrap();
            gets.push(t.elapsed());
        }
        for _ in 0..8 {
            let t = Instant::now();
            c.stop_bot(pb::StopBotRequest { name: "life".into(), ..Default::default() }).await.unwrap();
            c.start_bot(pb::StartBotRequest { name: "life".into() }).await.unwrap();
            cycles.push(t.elapsed());
        }
        rows.push((gets, cycles));
    }
    // What writing the events on the request path would add: a stop + start announces four.
    let mut inserts = Vec::new();
    for url in [near_url, far_url] {
        let store = berth_control_plane::store::Store::open(&url).await.unwrap();
        let mut times = Vec::new();
        for i in 0..50 {
            let ev = berth_control_plane::store::records::BotEvent {
                id: uuid::Uuid::new_v4().to_string(),
                seq: 0,
                name: format!("bench-{i}"),
                kind: "bench".into(),
                state: berth_control_plane::store::records::BotState::Running,
                message: String::new(),
                at_ms: 0,
                node: String::new(),
            };
            let t = Instant::now();
            store.insert_events(&[ev]).await.unwrap();
            times.push(t.elapsed());
        }
        inserts.push(times);
    }
    report.row("GetBot, database 5 ms away", &rows[1].0, Some(("database on loopback", &rows[0].0)));
    report.row(
        "StopBot + StartBot, database 5 ms away (events off the request path)",
        &rows[1].1,
        Some(("database on loopback", &rows[0].1)),
    );
    report.row(
        "  one event's write, database 5 ms away (a stop + start has four)",
        &inserts[1],
        Some(("database on loopback", &inserts[0])),
    );
    let on_path = report::pct(rows[1].1.clone()).0 + 4 * report::pct(inserts[1].clone()).0;
    report.text_row(
        "  StopBot + StartBot with its events on the request path (p50 + 4 writes)",
        &report::ms(on_path),
        &format!("off the path: {}", report::ms(report::pct(rows[1].1.clone()).0)),
        &format!("{:.2}x", on_path.as_secs_f64() / report::pct(rows[1].1.clone()).0.as_secs_f64()),
    );
    report.write("cluster");
}

/// A TCP proxy to `127.0.0.1:upstream` that holds every chunk `one_way` before passing it on (each
/// direction, so a round trip gains twice that); returns its port.
async fn delaying_proxy(upstream: u16, one_way: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, one_way));
            tokio::spawn(pipe(sr, cw, one_way));
        }
    });
    port
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}
