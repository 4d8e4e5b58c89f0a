//! Control-plane benchmarks (not tests), each against a floor measured in the same run on a private
//! containerd: create → first exec answered vs runc's task create + start, and exec round trips through
//! berthd and through the agent vs containerd's own `Tasks.Exec` and `ctr task exec`.
//! Writes `target/bench/berthd.{json,md}`. Run through `scripts/bench.sh`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot run should stop loudly

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_control_plane::runtime::containerd::Containerd;
use berth_control_plane::runtime::{BindMount, ContainerConfig, ContainerRuntime, Limits};
use berth_proto::controlplane::v1 as pb;
use common::{argv, run};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, StartRequest, WaitRequest};
use pb::bot_service_client::BotServiceClient;
use report::Report;
use support::berthd::TestBerthd;
use support::containerd::minimal_image;

/// A containerd request in the test namespace.
fn req<T>(ns: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
    r
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    let mut b = TestBerthd::start(None);
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = BotServiceClient::new(ch.clone());
    let mut report = Report {
        md: "| measure | Berth | floor / baseline (same run) | ratio |\n|---|---|---|---|\n".into(),
        json: vec![],
    };

    // Floor: runc task create + start of a pre-created container, straight through containerd.
    let ctd = Containerd::connect(&b.containerd.socket, &b.containerd.namespace, &b.dir.path().join("floor-logs"))
        .await
        .unwrap();
    let image = ctd.import_image(&minimal_image()).await.unwrap();
    let mut floor = Vec::new();
    for i in 0..12 {
        let id = format!("floor-{i}");
        let dir = b.dir.path().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let c = ContainerConfig {
            id: id.clone(),
            image: image.clone(),
            args: vec!["/bin/sleep".into(), "1000".into()],
            env: vec![],
            mounts: vec![BindMount { source: dir, destination: "/run/berth".into(), readonly: false }],
            limits: Limits::default(),
            netns: None,
            hostname: id.clone(),
            labels: HashMap::new(),
            snapshot: None,
            user_cgroup: false,
        };
        ctd.create(&c).await.unwrap();
        let t = Instant::now();
        ctd.start(&id).await.unwrap();
        if i >= 2 {
            floor.push(t.elapsed());
        }
        ctd.delete(&id).await.unwrap();
    }

    // Berth: CreateBot(start) until the first exec answers.
    let mut cold = Vec::new();
    for i in 0..12 {
        let name = format!("cold{i}");
        let t = Instant::now();
        bots.create_bot(pb::CreateBotRequest { name: name.clone(), start: Some(true), ..Default::default() })
            .await
            .unwrap();
        let mut a = agent_client::agent_on(ch.clone(), BearerAuth::none().with_bot(&name).unwrap());
        assert_eq!(run(&mut a, argv(&["/bin/true"])).await.unwrap().code(), Some(0));
        if i >= 2 {
            cold.push(t.elapsed());
        }
        bots.delete_bot(pb::DeleteBotRequest { name, keep_data: false }).await.unwrap();
    }
    report.row(
        "create → first exec answered (cold, no pool)",
        &cold,
        Some(("runc task create + start via containerd", &floor)),
    );

    // Exec round trips on one running bot.
    bots.create_bot(pb::CreateBotRequest { name: "hot".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap();
    let mut via_berthd = agent_client::agent_on(ch.clone(), BearerAuth::none().with_bot("hot").unwrap());
    let token = std::fs::read_to_string(b.dir.path().join("run/hot/conf/token")).unwrap();
    let mut direct: AgentClient =
        agent_client::connect_unix(&b.dir.path().join("run/hot/sock/agent.sock"), BearerAuth::new(&token).unwrap())
            .await
            .unwrap();
    // containerd's own exec: Tasks.Exec + Start + Wait + DeleteProcess, no stdio.
    let mut tasks = TasksClient::new(containerd_client::connect(&b.containerd.socket).await.unwrap());
    let process = serde_json::json!({"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin:/sbin:/usr/bin"], "user": {"uid": 0, "gid": 0}});
    let ns = b.containerd.namespace.as_str();
    let mut ctd_exec_once = async |i: usize| {
        let exec_id = format!("bench-{i}");
        let t = Instant::now();
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: process.to_string().into_bytes(),
        };
        let e = ExecProcessRequest {
            container_id: "bot-hot".into(),
            exec_id: exec_id.clone(),
            spec: Some(spec),
            ..Default::default()
        };
        tasks.exec(req(ns, e)).await.unwrap();
        let wait = {
            let mut tasks = tasks.clone();
            let r = req(ns, WaitRequest { container_id: "bot-hot".into(), exec_id: exec_id.clone() });
            tokio::spawn(async move { tasks.wait(r).await })
        };
        tasks.start(req(ns, StartRequest { container_id: "bot-hot".into(), exec_id: exec_id.clone() })).await.unwrap();
        wait.await.unwrap().unwrap();
        tasks.delete_process(req(ns, DeleteProcessRequest { container_id: "bot-hot".into(), exec_id })).await.unwrap();
        t.elapsed()
    };
    let exec_once = async |c: &mut AgentClient| {
        let t = Instant::now();
        assert_eq!(run(c, argv(&["/bin/true"])).await.unwrap().code(), Some(0));
        t.elapsed()
    };
    // The three ways are interleaved (one containerd exec per five of each of ours) so that drift in the
    // machine's speed during the run (a shared VM's) weighs on all of them alike.
    let (mut through_berthd, mut through_agent, mut ctd_exec) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..220 {
        let (via, direct) = (exec_once(&mut via_berthd).await, exec_once(&mut direct).await);
        let ctd = if i % 5 == 0 { Some(ctd_exec_once(i).await) } else { None };
        if i >= 20 {
            through_berthd.push(via);
            through_agent.push(direct);
            ctd_exec.extend(ctd);
        }
    }
    let mut ctr_exec = Vec::new();
    for i in 0..15 {
        let t = Instant::now();
        let st = Command::new("ctr")
            .arg("--address")
            .arg(&b.containerd.socket)
            .args([
                "--namespace",
                &b.containerd.namespace,
                "task",
                "exec",
                "--exec-id",
                &format!("ctr-{i}"),
                "bot-hot",
                "/bin/true",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        if i >= 3 {
            ctr_exec.push(t.elapsed());
        }
    }
    report.row(
        "exec /bin/true via berthd (gRPC, proxied)",
        &through_berthd,
        Some(("containerd Tasks.Exec", &ctd_exec)),
    );
    report.row("exec /bin/true via the agent directly", &through_agent, Some(("containerd Tasks.Exec", &ctd_exec)));
    report.row("exec /bin/true via the agent directly (vs ctr)", &through_agent, Some(("ctr task exec", &ctr_exec)));
    bots.delete_bot(pb::DeleteBotRequest { name: "hot".into(), keep_data: false }).await.unwrap();

    data_ops(&b, &mut report).await;
    concurrency(&b, &mut report).await;
    restart_with_bots(&mut b, &mut report).await;

    println!("\n{}", report.md);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("berthd.md"), &report.md).unwrap();
    std::fs::write(out.join("berthd.json"), format!("[\n{}\n]\n", report.json.join(",\n"))).unwrap();
}

/// Snapshot, rollback, export and import of a bot holding 10 MiB and 1 GiB of random data, each against a
/// host `cp` of the same bytes (the floor: every one of them copies or reads the data once).
async fn data_ops(b: &TestBerthd, report: &mut Report) {
    use pb::data_service_client::DataServiceClient;
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = BotServiceClient::new(ch.clone());
    let mut data = DataServiceClient::new(ch).max_decoding_message_size(64 << 20);
    bots.create_bot(pb::CreateBotRequest { name: "heavy".into(), start: Some(true), ..Default::default() })
        .await
        .unwrap();
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut agent = agent_client::agent_on(ch, BearerAuth::none().with_bot("heavy").unwrap());
    for (label, mib, n) in [("10 MiB", 10u64, 5usize), ("1 GiB", 1024, 2)] {
        let r = run(
            &mut agent,
            argv(&["sh", "-c", &format!("mkdir -p /data && head -c {} /dev/urandom > /data/blob", mib << 20)]),
        )
        .await
        .unwrap();
        assert_eq!(r.code(), Some(0));
        let (mut snap, mut back, mut export, mut import, mut cp) = (vec![], vec![], vec![], vec![], vec![]);
        let src = b.dir.path().join("blob");
        std::fs::write(&src, vec![7u8; (mib << 20) as usize]).unwrap();
        for i in 0..n {
            let t = Instant::now();
            let st = Command::new("cp").arg(&src).arg(b.dir.path().join("blob.copy")).status().unwrap();
            assert!(st.success());
            Command::new("sync").status().unwrap();
            cp.push(t.elapsed());
            let name = format!("b{mib}-{i}");
            let t = Instant::now();
            data.create_snapshot(pb::CreateSnapshotRequest { bot: "heavy".into(), name: name.clone() }).await.unwrap();
            snap.push(t.elapsed());
            let t = Instant::now();
            data.rollback(pb::RollbackRequest { bot: "heavy".into(), snapshot: name }).await.unwrap();
            back.push(t.elapsed());
            let t = Instant::now();
            let mut stream = data
                .export_data(pb::ExportDataRequest { bot: "heavy".into(), compression: pb::Compression::Zstd as i32 })
                .await
                .unwrap()
                .into_inner();
            let mut archive = Vec::new();
            while let Some(c) = stream.message().await.unwrap() {
                archive.extend_from_slice(&c.data);
            }
            export.push(t.elapsed());
            let mut msgs = vec![pb::ImportDataChunk { bot: "heavy".into(), replace: true, ..Default::default() }];
            msgs.extend(
                archive.chunks(1 << 20).map(|c| pb::ImportDataChunk { data: c.to_vec(), ..Default::default() }),
            );
            let t = Instant::now();
            data.import_data(tokio_stream::iter(msgs)).await.unwrap();
            import.push(t.elapsed());
        }
        let floor = format!("host cp of {label}");
        report.row(&format!("snapshot of a running bot, {label} changed"), &snap, Some((&floor, &cp)));
        report.row(&format!("rollback of a running bot (restart included), {label}"), &back, Some((&floor, &cp)));
        report.row(&format!("export (zstd, streamed to the client), {label}"), &export, Some((&floor, &cp)));
        report.row(&format!("import (replace; spool, check, apply, restart), {label}"), &import, Some((&floor, &cp)));
    }
    bots.delete_bot(pb::DeleteBotRequest { name: "heavy".into(), keep_data: false }).await.unwrap();
}

/// Unary calls through berthd's proxy (the agent's `Version`) and `GetBot`, by 1 and by 16 clients at once
/// (each its own connection), on 4 bots: the slowdown ratio is p50 at 16 over p50 alone.
async fn concurrency(b: &TestBerthd, report: &mut Report) {
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = BotServiceClient::new(ch);
    for i in 0..4 {
        bots.create_bot(pb::CreateBotRequest { name: format!("c{i}"), start: Some(true), ..Default::default() })
            .await
            .unwrap();
    }
    let round = |clients: usize, calls: usize| {
        let socket = b.socket.clone();
        async move {
            let mut tasks = Vec::new();
            for k in 0..clients {
                let socket = socket.clone();
                tasks.push(tokio::spawn(async move {
                    let ch = agent_client::channel(socket.to_str().unwrap()).await.unwrap();
                    let mut a = agent_client::agent_on(
                        ch.clone(),
                        BearerAuth::none().with_bot(&format!("c{}", k % 4)).unwrap(),
                    );
                    let mut g = BotServiceClient::new(ch);
                    let (mut unary, mut get) = (Vec::new(), Vec::new());
                    for i in 0..calls {
                        let t = Instant::now();
                        a.version(berth_proto::agent::v1::VersionRequest {}).await.unwrap();
                        if i >= 5 {
                            unary.push(t.elapsed());
                        }
                        let t = Instant::now();
                        g.get_bot(pb::GetBotRequest { name: format!("c{}", k % 4), ..Default::default() })
                            .await
                            .unwrap();
                        if i >= 5 {
                            get.push(t.elapsed());
                        }
                    }
                    (unary, get)
                }));
            }
            let (mut unary, mut get) = (Vec::new(), Vec::new());
            for t in tasks {
                let (u, g) = t.await.unwrap();
                unary.extend(u);
                get.extend(g);
            }
            (unary, get)
        }
    };
    let (u1, g1) = round(1, 205).await;
    let cpu = report::busy_cpu_seconds();
    let (u16, g16) = round(16, 105).await;
    // Each client alternates the two calls, so a pair costs this much CPU on the machine as a whole.
    let cpu_per_pair = (report::busy_cpu_seconds() - cpu) / u16.len() as f64;
    report.row("agent Version through berthd, 16 clients at once", &u16, Some(("1 client alone", &u1)));
    report.row("GetBot (database + containerd), 16 clients at once", &g16, Some(("1 client alone", &g1)));
    // Little's law: 16 callers each waiting for one call at a time on saturated cores wait, per call, at
    // least 16 × (CPU per call) ÷ cores; a pair of calls is what each client repeats.
    let floor = report::cpu_floor(16, cpu_per_pair);
    let (p1, _) = report::pct(u1.iter().zip(&g1).map(|(a, b)| *a + *b).collect());
    report.text_row(
        "16 clients: the machine's CPU floor for one Version + GetBot pair",
        &format!(
            "{} CPU per pair (all processes) → p50 ≥ {} with 16 callers on {} cores",
            report::ms(Duration::from_secs_f64(cpu_per_pair)),
            report::ms(floor),
            report::cores()
        ),
        &format!("1 client alone: pair p50 {}", report::ms(p1)),
        &format!("{:.2}x", floor.as_secs_f64() / p1.as_secs_f64()),
    );
    for i in 0..4 {
        bots.delete_bot(pb::DeleteBotRequest { name: format!("c{i}"), keep_data: false }).await.unwrap();
    }
}

/// berthd killed with SIGKILL and started again with 20 running bots: time until every bot answers an
/// exec, against the same restart with no bots. No bot may be restarted.
async fn restart_with_bots(b: &mut TestBerthd, report: &mut Report) {
    let until_all_answer = |b: &TestBerthd, names: Vec<String>| {
        let socket = b.socket.clone();
        async move {
            let ch = agent_client::channel(socket.to_str().unwrap()).await.unwrap();
            for name in names {
                let mut a = agent_client::agent_on(ch.clone(), BearerAuth::none().with_bot(&name).unwrap());
                assert_eq!(run(&mut a, argv(&["/bin/true"])).await.unwrap().code(), Some(0));
            }
        }
    };
    let mut empty = Vec::new();
    for _ in 0..3 {
        b.halt(libc::SIGKILL);
        let t = Instant::now();
        b.spawn();
        until_all_answer(b, vec![]).await;
        let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
        BotServiceClient::new(ch).list_bots(pb::ListBotsRequest::default()).await.unwrap();
        empty.push(t.elapsed());
    }
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = BotServiceClient::new(ch);
    let names: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for n in &names {
        bots.create_bot(pb::CreateBotRequest { name: n.clone(), start: Some(true), ..Default::default() })
            .await
            .unwrap();
    }
    let pids = |bots: Vec<pb::Bot>| bots.into_iter().map(|b| (b.name, b.pid)).collect::<Vec<_>>();
    let mut before = Vec::new();
    for n in &names {
        before.push(
            bots.get_bot(pb::GetBotRequest { name: n.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .bot
                .unwrap(),
        );
    }
    let before = pids(before);
    idle_memory(b, &before, report);
    let mut full = Vec::new();
    for _ in 0..3 {
        b.halt(libc::SIGKILL);
        let t = Instant::now();
        b.spawn();
        until_all_answer(b, names.clone()).await;
        full.push(t.elapsed());
    }
    let ch = agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = BotServiceClient::new(ch);
    let mut after = Vec::new();
    for n in &names {
        after.push(
            bots.get_bot(pb::GetBotRequest { name: n.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .bot
                .unwrap(),
        );
    }
    assert_eq!(pids(after), before, "a berthd restart restarted bots");
    report.row(
        "berthd SIGKILL + start → all 20 bots answer an exec",
        &full,
        Some(("the same restart with no bots", &empty)),
    );
    for n in names {
        bots.delete_bot(pb::DeleteBotRequest { name: n, keep_data: false }).await.unwrap();
    }
}

/// Proportional set size (shared pages split among sharers) of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Host memory of idle bots: each bot's containerd shim plus everything in its container (the agent),
/// by PSS, averaged over the running bots; and how many such bots fit in a GiB.
fn idle_memory(b: &TestBerthd, bots: &[(String, u32)], report: &mut Report) {
    std::thread::sleep(Duration::from_secs(2));
    let mut total_kib = 0;
    for (name, pid) in bots {
        let shim = Command::new("pgrep")
            .args(["-f", "--", &format!("-namespace {} -id bot-{name} ", b.containerd.namespace)])
            .output()
            .unwrap();
        let shim: u32 = String::from_utf8_lossy(&shim.stdout).split_whitespace().next().unwrap().parse().unwrap();
        total_kib += pss_kib(shim) + pss_kib(*pid);
    }
    let per_bot_mib = total_kib as f64 / bots.len() as f64 / 1024.0;
    let line = format!(
        "{per_bot_mib:.2} MiB per bot (shim + agent, PSS, {} idle bots); {:.0} bots per GiB",
        bots.len(),
        1024.0 / per_bot_mib
    );
    println!("host memory per idle bot: {line}");
    report.md.push_str(&format!("| host memory per idle bot | {line} | - | - |\n"));
    report.json.push(format!(r#"{{"name":"host memory per idle bot","mib":{per_bot_mib:.3},"bots":{}}}"#, bots.len()));
}
