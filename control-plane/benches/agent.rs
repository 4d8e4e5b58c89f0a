//! Agent benchmarks (not tests): latency and throughput of the real static agent over its Unix socket,
//! each paired with a baseline measured in the same run on the same machine. Prints a Markdown table and
//! writes `target/bench/agent.{json,md}`. Run through `scripts/bench.sh`.
//!
//! Figures are p50/p99 over many runs. Baselines: a local fork+exec of the same binary (the floor any exec
//! path pays), `cat` piped directly (MCP relay), and `cp` of the same file (transfers).

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod report;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use common::*;
use pb::upload_request::Frame as Up;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1 << 20;

struct Row {
    name: String,
    value: String,
    baseline: String,
    ratio: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: Vec<String>,
}

impl Report {
    fn latency(&mut self, name: &str, s: &Stats, base: Option<(&str, &Stats)>) {
        let (baseline, ratio) = match base {
            Some((b, bs)) => (
                format!("{b}: p50 {} / p99 {}", fmt_dur(bs.p50), fmt_dur(bs.p99)),
                format!("{:.2}x", s.p50.as_secs_f64() / bs.p50.as_secs_f64()),
            ),
            None => ("-".into(), "-".into()),
        };
        println!("{name}: p50 {} p99 {} (n={}) | {baseline}", fmt_dur(s.p50), fmt_dur(s.p99), s.n);
        self.json.push(format!(
            r#"{{"name":"{name}","p50_us":{:.1},"p99_us":{:.1},"n":{}}}"#,
            s.p50.as_secs_f64() * 1e6,
            s.p99.as_secs_f64() * 1e6,
            s.n
        ));
        self.rows.push(Row {
            name: name.into(),
            value: format!("p50 {} / p99 {}", fmt_dur(s.p50), fmt_dur(s.p99)),
            baseline,
            ratio,
        });
    }

    fn value(&mut self, name: &str, value: String, baseline: String, ratio: String, json: String) {
        println!("{name}: {value} | {baseline}");
        self.json.push(json);
        self.rows.push(Row { name: name.into(), value, baseline, ratio });
    }

    fn markdown(&self) -> String {
        let mut s = String::from("| measure | Berth agent | baseline (same run) | ratio |\n|---|---|---|---|\n");
        for r in &self.rows {
            s.push_str(&format!("| {} | {} | {} | {} |\n", r.name, r.value, r.baseline, r.ratio));
        }
        s
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    n: usize,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats { p50: pick(0.5), p99: pick(0.99), n: v.len() }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

async fn time_n(warmup: usize, n: usize, mut f: impl AsyncFnMut()) -> Stats {
    for _ in 0..warmup {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    stats(v)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

async fn exec_true(c: &mut AgentClient) {
    let r = run(c, argv(&["/bin/true"])).await.unwrap();
    assert_eq!(r.code(), Some(0));
}

async fn upload(c: &AgentClient, path: &str, total: usize) {
    let (tx, rx) = mpsc::channel(8);
    let mut client = c.clone();
    let call = tokio::spawn(async move { client.upload(ReceiverStream::new(rx)).await });
    let open = pb::UploadOpen { path: path.into(), mode: 0, create_parents: true, no_overwrite: false };
    tx.send(pb::UploadRequest { frame: Some(Up::Open(open)) }).await.unwrap();
    let chunk = vec![0x5au8; MIB];
    let mut sent = 0;
    while sent < total {
        let n = MIB.min(total - sent);
        tx.send(pb::UploadRequest { frame: Some(Up::Data(chunk[..n].to_vec())) }).await.unwrap();
        sent += n;
    }
    tx.send(pb::UploadRequest { frame: Some(Up::Commit(pb::UploadCommit::default())) }).await.unwrap();
    drop(tx);
    call.await.unwrap().unwrap();
}

async fn download(c: &mut AgentClient, path: &str) -> usize {
    let req = pb::DownloadRequest { path: path.into(), chunk_size_bytes: MIB as u32, ..Default::default() };
    let mut s = c.download(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await.unwrap() {
        n += chunk.data.len();
    }
    n
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

async fn transfers(report: &mut Report, agent: &TestAgent, c: &mut AgentClient, size: usize, label: &str, runs: usize) {
    let path = format!("bench-{label}.bin");
    let mut up_best = Duration::MAX;
    let mut down_best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        upload(c, &path, size).await;
        up_best = up_best.min(t.elapsed());
        let t = Instant::now();
        assert_eq!(download(c, &path).await, size);
        down_best = down_best.min(t.elapsed());
    }
    let src = agent.host(&format!("/data/{path}"));
    let dst = agent.dir.path().join("cp-copy.bin");
    let cp_best = best_of(runs, || {
        let t = Instant::now();
        assert!(Command::new("cp").arg(&src).arg(&dst).status().unwrap().success());
        Command::new("sync").arg(&dst).status().unwrap();
        t.elapsed()
    });
    let cp = mib_per_s(size, cp_best);
    for (dir, d) in [("upload", up_best), ("download", down_best)] {
        let v = mib_per_s(size, d);
        report.value(
            &format!("{dir} {label} (best of {runs})"),
            format!("{v:.0} MiB/s"),
            format!("cp + fsync: {cp:.0} MiB/s"),
            format!("{:.2}x", v / cp),
            format!(r#"{{"name":"{dir}_{label}","mib_per_s":{v:.1},"baseline_cp_mib_per_s":{cp:.1}}}"#),
        );
    }
}

async fn concurrency(report: &mut Report, c: &AgentClient) {
    let mut single_p50 = None;
    for clients in [1usize, 4, 16, 64] {
        let per_client = 400 / clients.max(1) + 50;
        let cpu = report::busy_cpu_seconds();
        let t = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..clients {
            let mut c = c.clone();
            handles.push(tokio::spawn(async move {
                let mut v = Vec::new();
                for _ in 0..per_client {
                    let t = Instant::now();
                    c.stat(pb::StatRequest { path: "/".into(), follow_symlinks: false }).await.unwrap();
                    v.push(t.elapsed());
                }
                v
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        let wall = t.elapsed();
        let total = all.len();
        let cpu_per_call = (report::busy_cpu_seconds() - cpu) / total as f64;
        let floor = report::cpu_floor(clients, cpu_per_call);
        let s = stats(all);
        let rps = total as f64 / wall.as_secs_f64();
        let base = *single_p50.get_or_insert(s.p50);
        report.value(
            &format!("unary Stat, {clients} concurrent clients"),
            format!(
                "{rps:.0} req/s, p50 {} / p99 {}; CPU {} per call → floor p50 {}",
                fmt_dur(s.p50),
                fmt_dur(s.p99),
                fmt_dur(Duration::from_secs_f64(cpu_per_call)),
                fmt_dur(floor)
            ),
            format!("1 client p50 {}", fmt_dur(base)),
            format!("{:.2}x", s.p50.as_secs_f64() / base.as_secs_f64()),
            format!(
                r#"{{"name":"concurrency_{clients}","req_per_s":{rps:.0},"p50_us":{:.1},"p99_us":{:.1},"cpu_per_call_us":{:.1},"cpu_floor_p50_us":{:.1}}}"#,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                cpu_per_call * 1e6,
                floor.as_secs_f64() * 1e6
            ),
        );
    }
}

async fn mcp_relay(report: &mut Report, c: &mut AgentClient) {
    use pb::mcp_session_request::Frame as In;
    use pb::mcp_session_response::Frame as Out;
    let msg =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;
    let (tx, rx) = mpsc::channel(4);
    let open = pb::McpOpen { command: "cat".into(), ..Default::default() };
    tx.send(pb::McpSessionRequest { frame: Some(In::Open(open)) }).await.unwrap();
    let mut resp = c.mcp_session(ReceiverStream::new(rx)).await.unwrap().into_inner();
    resp.message().await.unwrap();
    let through = time_n(50, 1000, async || {
        tx.send(pb::McpSessionRequest { frame: Some(In::Message(msg.to_vec())) }).await.unwrap();
        match resp.message().await.unwrap().unwrap().frame {
            Some(Out::Message(m)) => assert_eq!(m, msg),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    drop(tx);
    let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = Vec::new();
    let mut direct = Vec::new();
    for i in 0..1050 {
        let t = Instant::now();
        stdin.write_all(msg).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        line.clear();
        stdout.read_until(b'\n', &mut line).unwrap();
        if i >= 50 {
            direct.push(t.elapsed());
        }
    }
    drop(stdin);
    child.wait().unwrap();
    report.latency(
        "MCP message round trip (echo server `cat`)",
        &through,
        Some(("same server on a local pipe", &stats(direct))),
    );
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted from the state field (3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Output read three ways: an attached exec's stream (the baseline), a detached process's journal
/// followed live, and the same journal read back after the process ended; with the agent's CPU per
/// MiB for the attached and the detached run (the journal's cost; its disk cost is the output itself,
/// written through the page cache).
async fn detached_output(report: &mut Report, agent: &TestAgent, c: &mut AgentClient) {
    const SIZE: usize = 256 * MIB;
    let cmd = format!("head -c {SIZE} /dev/zero");
    let tick_ms = 1000.0 / 100.0;
    let pid = agent.pid();
    let (mut attached, mut live, mut replay) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut attached_cpu, mut detached_cpu) = (u64::MAX, u64::MAX);
    for round in 0..3 {
        let cpu = cpu_ticks(pid);
        let t = Instant::now();
        let r = run(c, argv(&["sh", "-c", &cmd])).await.unwrap();
        assert_eq!(r.stdout.len(), SIZE);
        attached = attached.min(t.elapsed());
        attached_cpu = attached_cpu.min(cpu_ticks(pid) - cpu);

        let cpu = cpu_ticks(pid);
        let t = Instant::now();
        let start = pb::StartProcessRequest {
            request_id: format!("bench-{round}"),
            start: Some(pb::ExecStart { shell: cmd.clone(), ..Default::default() }),
            journal_bytes: SIZE as u64,
        };
        let id = c.start_process(start).await.unwrap().into_inner().id;
        let read = |follow: bool| pb::ReadOutputRequest { id: id.clone(), stream: 0, offset: 0, follow };
        let mut s = c.read_output(read(true)).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(ch) = s.message().await.unwrap() {
            n += ch.data.len();
        }
        assert_eq!(n, SIZE);
        live = live.min(t.elapsed());
        detached_cpu = detached_cpu.min(cpu_ticks(pid) - cpu);

        let t = Instant::now();
        let mut s = c.read_output(read(false)).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(ch) = s.message().await.unwrap() {
            n += ch.data.len();
        }
        assert_eq!(n, SIZE);
        replay = replay.min(t.elapsed());
        c.remove_process(pb::RemoveProcessRequest { id }).await.unwrap();
    }
    let base = mib_per_s(SIZE, attached);
    for (name, key, d) in [("followed live", "live", live), ("read back from the journal", "replay", replay)] {
        let v = mib_per_s(SIZE, d);
        report.value(
            &format!("detached output, 256 MiB {name} (best of 3)"),
            format!("{v:.0} MiB/s"),
            format!("attached exec stdout: {base:.0} MiB/s"),
            format!("{:.2}x", v / base),
            format!(r#"{{"name":"detached_{key}","mib_per_s":{v:.1},"baseline_exec_mib_per_s":{base:.1}}}"#),
        );
    }
    let per_mib = |ticks: u64| ticks as f64 * tick_ms / (SIZE / MIB) as f64;
    let (a, d) = (per_mib(attached_cpu), per_mib(detached_cpu));
    report.value(
        "agent CPU per MiB of output, detached (journal) vs attached",
        format!("{d:.2} ms/MiB (disk: 1 MiB per MiB, page cache)"),
        format!("attached exec: {a:.2} ms/MiB"),
        format!("{:.2}x", d / a.max(0.001)),
        format!(r#"{{"name":"journal_cpu_ms_per_mib","detached":{d:.3},"attached":{a:.3}}}"#),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    let bin = std::env::var("BERTH_AGENT_BIN").unwrap_or_else(|_| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/x86_64-unknown-linux-gnu/agent/berth-agent");
        assert!(p.exists(), "{} is missing: run scripts/bench.sh (it builds the static agent)", p.display());
        // SAFETY: single-threaded at this point of start-up; read only by the harness below.
        unsafe { std::env::set_var("BERTH_AGENT_BIN", &p) };
        p.display().to_string()
    });
    let mut report = Report::default();
    let size = std::fs::metadata(&bin).unwrap().len();
    report.value(
        "agent binary (static, stripped)",
        format!("{:.2} MiB", size as f64 / MIB as f64),
        "-".into(),
        "-".into(),
        format!(r#"{{"name":"agent_binary_bytes","value":{size}}}"#),
    );
    let agent = TestAgent::start().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(agent.pid());
    let mut c = agent.client().await;

    let via_agent = time_n(20, 300, async || exec_true(&mut c).await).await;
    let local = time_n(20, 300, async || {
        assert!(Command::new("/bin/true").status().unwrap().success());
    })
    .await;
    report.latency("exec /bin/true round trip via agent", &via_agent, Some(("local fork+exec+wait", &local)));
    // Where the time goes: until the `started` frame (spawn done) and from there to `exited`.
    let (mut to_started, mut to_exited) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        let (_tx, mut stream) = exec_open(&mut c, argv(&["/bin/true"])).await.unwrap();
        stream.message().await.unwrap().unwrap();
        let started = t.elapsed();
        while stream.message().await.unwrap().is_some() {}
        to_started.push(started);
        to_exited.push(t.elapsed() - started);
    }
    report.latency("exec /bin/true: request → started frame", &stats(to_started), None);
    report.latency("exec /bin/true: started → exited frame", &stats(to_exited), None);

    std::fs::write(agent.host("/data/small.txt"), b"hello").unwrap();
    let s = time_n(100, 2000, async || {
        c.stat(pb::StatRequest { path: "small.txt".into(), follow_symlinks: false }).await.unwrap();
    })
    .await;
    report.latency("unary RPC (Stat)", &s, None);
    let s = time_n(100, 2000, async || {
        c.read_file(pb::ReadFileRequest { path: "small.txt".into(), ..Default::default() }).await.unwrap();
    })
    .await;
    report.latency("unary RPC (ReadFile, 5 B)", &s, None);

    concurrency(&mut report, &c).await;
    mcp_relay(&mut report, &mut c).await;
    transfers(&mut report, &agent, &mut c, MIB, "1 MiB", 20).await;
    transfers(&mut report, &agent, &mut c, 1024 * MIB, "1 GiB", 2).await;
    detached_output(&mut report, &agent, &mut c).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(agent.pid());
    report.value(
        "agent RSS idle (after start / after the whole run)",
        format!("{:.2} MiB / {:.2} MiB", idle as f64 / 1024.0, after as f64 / 1024.0),
        "-".into(),
        "-".into(),
        format!(r#"{{"name":"agent_rss_kib","idle":{idle},"after_run":{after}}}"#),
    );

    let md = report.markdown();
    println!("\n{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("agent.md"), &md).unwrap();
    std::fs::write(out.join("agent.json"), format!("[\n{}\n]\n", report.json.join(",\n"))).unwrap();
}
