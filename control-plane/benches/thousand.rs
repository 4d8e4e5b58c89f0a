//! A thousand idle bots on one node (minimal image, SQLite, the defaults otherwise), against ten on the
//! same berthd in the same run:
//! - create rate (eight creates at a time) and memory per bot (the host's MemAvailable before and after);
//! - berthd's and containerd's CPU per reconcile pass while every bot idles;
//! - GetBot, a ListBots page and an exec round trip, p50/p99, at 10 bots and at 1,000;
//! - after berthd restarts (SIGTERM, started again): time until it listens, and until all 1,000 bots
//!   have answered an exec;
//! - delete rate.
//!
//! `BERTH_BENCH_BOTS` sets the count (default 1000). Writes `target/bench/thousand.{json,md}`. Run
//! through `scripts/bench.sh`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, BearerAuth};
use berth_proto::controlplane::v1 as pb;
use common::{argv, run};
use report::Report;
use support::berthd::TestBerthd;
use tonic::transport::Channel;

const FEW: usize = 10;
const PARALLEL: usize = 8;
/// How long an idle window is watched for the reconciler's CPU.
const IDLE: Duration = Duration::from_secs(30);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async_main());
}

fn name(i: usize) -> String {
    format!("t{i:04}")
}

async fn channel(b: &TestBerthd) -> Channel {
    agent_client::channel(b.socket.to_str().unwrap()).await.unwrap()
}

/// Clock ticks of CPU (user + system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The `KEY:   N kB` field of a /proc text file, in MiB.
fn kib_field_mib(path: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {path}"));
    let kb: f64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
}

fn rss_mib(pid: u32) -> f64 {
    kib_field_mib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn mem_available_mib() -> f64 {
    kib_field_mib("/proc/meminfo", "MemAvailable:")
}

async fn passes(b: &TestBerthd) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", b.metrics_addr())).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix("berth_reconcile_passes_total ")).unwrap().parse().unwrap()
}

/// berthd's and containerd's CPU per reconcile pass over an idle window, in ms, and the passes counted.
async fn reconcile_cpu(b: &TestBerthd) -> (f64, f64, f64) {
    let (bp, cp) = (b.pid().unwrap(), b.containerd.pid());
    let (b0, c0, p0) = (cpu_seconds(bp), cpu_seconds(cp), passes(b).await);
    tokio::time::sleep(IDLE).await;
    let (b1, c1, p1) = (cpu_seconds(bp), cpu_seconds(cp), passes(b).await);
    let n = (p1 - p0).max(1.0);
    ((b1 - b0) * 1e3 / n, (c1 - c0) * 1e3 / n, p1 - p0)
}

struct Reads {
    get: Vec<Duration>,
    list: Vec<Duration>,
    exec: Vec<Duration>,
}

async fn reads(ch: &Channel) -> Reads {
    let mut c = pb::bot_service_client::BotServiceClient::new(ch.clone());
    let mut a = agent_client::agent_on(ch.clone(), BearerAuth::none().with_bot(&name(0)).unwrap());
    for _ in 0..20 {
        c.get_bot(pb::GetBotRequest { name: name(0), ..Default::default() }).await.unwrap();
        run(&mut a, argv(&["true"])).await.unwrap();
    }
    let mut r = Reads { get: Vec::new(), list: Vec::new(), exec: Vec::new() };
    for _ in 0..200 {
        let t = Instant::now();
        c.get_bot(pb::GetBotRequest { name: name(0), ..Default::default() }).await.unwrap();
        r.get.push(t.elapsed());
    }
    for _ in 0..50 {
        let t = Instant::now();
        c.list_bots(pb::ListBotsRequest { page_size: 10, ..Default::default() }).await.unwrap();
        r.list.push(t.elapsed());
    }
    for _ in 0..100 {
        let t = Instant::now();
        assert_eq!(run(&mut a, argv(&["true"])).await.unwrap().code(), Some(0));
        r.exec.push(t.elapsed());
    }
    r
}

/// Runs `f` on every index in `range`, `width` at a time; returns each call's time.
async fn each<F, Fut>(range: std::ops::Range<usize>, width: usize, f: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let end = range.end;
    let mut tasks = Vec::new();
    for _ in 0..width {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    return times;
                }
                let t = Instant::now();
                f(i).await;
                times.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn create(ch: Channel, i: usize) {
    let mut c = pb::bot_service_client::BotServiceClient::new(ch);
    let req = pb::CreateBotRequest { name: name(i), ..Default::default() };
    c.create_bot(req).await.unwrap_or_else(|e| panic!("create {}: {e:?}", name(i)));
}

async fn async_main() {
    let bots: usize = std::env::var("BERTH_BENCH_BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut report = Report::new();
    let mut b = TestBerthd::start(None);
    // One /24 holds 253 bots: this berthd gets a /20 of its own.
    b.halt(libc::SIGTERM);
    let args = b.args_mut();
    let at = args.iter().position(|a| a == "--subnet").unwrap() + 1;
    let octet = 16 * (uuid::Uuid::new_v4().as_bytes()[0] % 16);
    args[at] = format!("10.254.{octet}.0/20").into();
    b.spawn();
    let ch = channel(&b).await;

    let few = {
        let ch = ch.clone();
        each(0..FEW, 1, move |i| create(ch.clone(), i)).await
    };
    let reads_few = reads(&ch).await;
    let (cpu_few, ctd_few, passes_few) = reconcile_cpu(&b).await;
    let rss_few = rss_mib(b.pid().unwrap());

    let before = mem_available_mib();
    let started = Instant::now();
    let many = {
        let ch = ch.clone();
        each(FEW..bots, PARALLEL, move |i| create(ch.clone(), i)).await
    };
    let create_all = started.elapsed();
    println!("{bots} bots created in {create_all:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = mem_available_mib();
    let per_bot = (before - after) / (bots - FEW) as f64;
    let reads_many = reads(&ch).await;
    let (cpu_many, ctd_many, passes_many) = reconcile_cpu(&b).await;
    let rss_many = rss_mib(b.pid().unwrap());

    report.row(&format!("create, one at a time, at {FEW} bots"), &few, None);
    report.row(
        &format!("create, {PARALLEL} at a time, up to {bots} bots"),
        &many,
        Some((&format!("one at a time at {FEW}"), &few)),
    );
    report.text_row(
        &format!("create rate to {bots} bots"),
        &format!(
            "{:.1} bots/s ({} in {:.1} s)",
            (bots - FEW) as f64 / create_all.as_secs_f64(),
            bots - FEW,
            create_all.as_secs_f64()
        ),
        "-",
        "-",
    );
    report.text_row(
        "host memory per idle bot (MemAvailable)",
        &format!("{per_bot:.1} MiB ({:.0} MiB for {})", before - after, bots - FEW),
        &format!("berthd RSS {rss_few:.0} MiB at {FEW}, {rss_many:.0} MiB at {bots}"),
        "-",
    );
    report.text_row(
        "CPU per reconcile pass: berthd / containerd",
        &format!("{cpu_many:.1} / {ctd_many:.1} ms at {bots} ({passes_many} passes in {IDLE:?})"),
        &format!("{cpu_few:.1} / {ctd_few:.1} ms at {FEW} ({passes_few} passes)"),
        &format!("{:.1}x", cpu_many / cpu_few.max(0.1)),
    );
    report.row(&format!("GetBot at {bots} bots"), &reads_many.get, Some((&format!("at {FEW}"), &reads_few.get)));
    report.row(
        &format!("ListBots (a page of 10) at {bots} bots"),
        &reads_many.list,
        Some((&format!("at {FEW}"), &reads_few.list)),
    );
    report.row(
        &format!("exec round trip at {bots} bots"),
        &reads_many.exec,
        Some((&format!("at {FEW}"), &reads_few.exec)),
    );

    // berthd restarts; the bots run on. Until it listens (it has recovered every bot), then until every bot
    // has answered an exec.
    b.halt(libc::SIGTERM);
    let restarted = Instant::now();
    b.spawn();
    let listening = restarted.elapsed();
    let ch = channel(&b).await;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let execs = {
        let (ch, failures) = (ch.clone(), failures.clone());
        each(0..bots, 16, move |i| {
            let (ch, failures) = (ch.clone(), failures.clone());
            async move {
                let mut a = agent_client::agent_on(ch, BearerAuth::none().with_bot(&name(i)).unwrap());
                if !matches!(run(&mut a, argv(&["true"])).await.map(|r| r.code()), Ok(Some(0))) {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await
    };
    let all_answered = restarted.elapsed();
    let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} bots did not answer an exec after the restart");
    report.text_row(
        &format!("berthd restart with {bots} bots: listening / all answered an exec"),
        &format!("{:.2} s / {:.2} s", listening.as_secs_f64(), all_answered.as_secs_f64()),
        &format!("exec p50 {} during the sweep (16 at a time)", report::ms(report::pct(execs).0)),
        "-",
    );

    let started = Instant::now();
    let deletes = {
        let ch = ch.clone();
        each(0..bots, PARALLEL, move |i| {
            let ch = ch.clone();
            async move {
                let mut c = pb::bot_service_client::BotServiceClient::new(ch);
                c.delete_bot(pb::DeleteBotRequest { name: name(i), ..Default::default() }).await.unwrap();
            }
        })
        .await
    };
    let delete_all = started.elapsed();
    report.row(&format!("delete, {PARALLEL} at a time, {bots} bots"), &deletes, None);
    report.text_row(
        "delete rate",
        &format!("{:.1} bots/s ({bots} in {:.1} s)", bots as f64 / delete_all.as_secs_f64(), delete_all.as_secs_f64()),
        "-",
        "-",
    );
    report.write("thousand");
}
