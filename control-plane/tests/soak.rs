//! Soak: 200 create → exec → delete cycles of bots, four at a time, on a real containerd; afterwards
//! nothing may have leaked: containers, tasks, shims, snapshots, leases, network namespaces, veths, IP
//! leases, cgroups, mounts, berthd's file descriptors, database rows.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::time::Instant;

use berth_control_plane::agent_client;
use berth_proto::controlplane::v1 as pb;
use common::{argv, run};
use pb::bot_service_client::BotServiceClient;
use support::berthd::TestBerthd;

const WORKERS: usize = 4;
const CYCLES_PER_WORKER: usize = 50;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_create_delete_cycles_leak_nothing() {
    let b = TestBerthd::start(None);
    // Warm up once (first-use allocations, connection pools), then count.
    let mut c = BotServiceClient::new(agent_client::channel(b.socket.to_str().unwrap()).await.unwrap());
    c.create_bot(pb::CreateBotRequest { name: "warm".into(), start: Some(true), ..Default::default() }).await.unwrap();
    c.delete_bot(pb::DeleteBotRequest { name: "warm".into(), keep_data: false }).await.unwrap();
    let pid = b.pid().unwrap();
    let fds_before = fds(pid);
    let t = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let socket = b.socket.clone();
        workers.push(tokio::spawn(async move {
            let ch = agent_client::channel(socket.to_str().unwrap()).await.unwrap();
            let mut c = BotServiceClient::new(ch.clone());
            for i in 0..CYCLES_PER_WORKER {
                let name = format!("soak-{w}-{i}");
                if let Err(e) = c
                    .create_bot(pb::CreateBotRequest { name: name.clone(), start: Some(true), ..Default::default() })
                    .await
                {
                    return Err(format!("create {name}: {e:?}"));
                }
                let mut a = agent_client::agent_on(
                    ch.clone(),
                    berth_control_plane::agent_client::BearerAuth::none().with_bot(&name).unwrap(),
                );
                let r = run(&mut a, argv(&["true"])).await.unwrap();
                assert_eq!(r.code(), Some(0));
                if let Err(e) = c.delete_bot(pb::DeleteBotRequest { name: name.clone(), keep_data: false }).await {
                    return Err(format!("delete {name}: {e:?}"));
                }
            }
            Ok(())
        }));
    }
    for w in workers {
        // A failure shows berthd's log, where the error's id leads to its causes.
        if let Err(e) = w.await.unwrap() {
            panic!("{e}\n--- berthd log ---\n{}", b.log());
        }
    }
    let cycles = WORKERS * CYCLES_PER_WORKER;
    eprintln!("{cycles} cycles in {:.1} s", t.elapsed().as_secs_f64());

    let ctd = &b.containerd;
    assert!(ctd.ctr_ls("containers").is_empty(), "containers leaked");
    assert!(ctd.ctr_ls("tasks").is_empty(), "tasks leaked");
    let snaps = ctd.ctr(&["snapshots", "ls"]);
    assert!(!snaps.contains("bot-") && !snaps.contains("berth."), "snapshots leaked:\n{snaps}");
    let leases = ctd.ctr(&["leases", "ls"]);
    assert!(!leases.contains("berth-"), "leases leaked:\n{leases}");
    let shims = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("containerd-shim.* -namespace {} ", ctd.namespace)])
        .output()
        .unwrap();
    // pgrep exits 1 when nothing matches; anything else (2: bad usage) would make this check vacuous.
    let listed = String::from_utf8_lossy(&shims.stdout).into_owned();
    let described: Vec<String> = listed
        .split_whitespace()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " "))
        .collect();
    assert_eq!(shims.status.code(), Some(1), "shims leaked: {described:?}");
    let agents = std::process::Command::new("pgrep").args(["-f", "--", "^/sbin/berth-agent "]).output().unwrap();
    let ours: Vec<String> = String::from_utf8_lossy(&agents.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&format!("/berth/{}/", ctd.namespace)))
        })
        .map(String::from)
        .collect();
    assert!(ours.is_empty(), "bot processes leaked: {ours:?}");
    let netns: Vec<_> =
        std::fs::read_dir(b.dir.path().join("run/netns")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(netns.is_empty(), "network namespaces leaked: {netns:?}");
    let veths = std::process::Command::new("ip").args(["-o", "link", "show", "master", &b.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&veths.stdout).trim().is_empty(), "veths leaked");
    let leases_dir = b.dir.path().join("state/ipam/berth");
    let ips: Vec<String> = std::fs::read_dir(&leases_dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(ips.iter().all(|f| !f.chars().next().is_some_and(|c| c.is_ascii_digit())), "IP leases leaked: {ips:?}");
    for controller in ["memory", "pids", "cpu", "unified", ""] {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(controller).join("berth").join(&ctd.namespace);
        let children: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(children.is_empty(), "cgroups leaked under {}: {children:?}", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(b.dir.path().to_str().unwrap()) || l.contains(ctd.dir.path().to_str().unwrap()))
        .collect();
    assert!(ours.is_empty(), "mounts leaked: {ours:#?}");
    let fds_after = fds(pid);
    assert!(fds_after <= fds_before + 8, "berthd's file descriptors grew from {fds_before} to {fds_after}");
    let left = c.list_bots(pb::ListBotsRequest::default()).await.unwrap().into_inner().bots;
    assert!(left.is_empty(), "bot rows leaked: {left:?}");
}
