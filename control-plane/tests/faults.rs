//! The fault-injection suite, on a real containerd with berthd's reconciler running every 300 ms: each
//! test injects one fault, checks what a user sees, waits for recovery (with a deadline), and checks that
//! no data was lost. Each writes a row of the fault table to `target/tmp/faults/` (see docs/FAULTS.md).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::time::{Duration, Instant};

use berth_control_plane::agent_client;
use berth_proto::controlplane::v1 as pb;
use common::{argv, run};
use pb::bot_service_client::BotServiceClient;
use support::berthd::TestBerthd;
use tonic::transport::Channel;

fn berthd() -> TestBerthd {
    TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"])
}

async fn bots(b: &TestBerthd) -> BotServiceClient<Channel> {
    BotServiceClient::new(agent_client::channel(b.socket.to_str().unwrap()).await.unwrap())
}

async fn get(b: &TestBerthd, name: &str) -> pb::Bot {
    bots(b)
        .await
        .get_bot(pb::GetBotRequest { name: name.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bot
        .unwrap()
}

async fn create(b: &TestBerthd, name: &str, resources: Option<pb::Resources>) -> pb::Bot {
    let req = pb::CreateBotRequest { name: name.into(), start: Some(true), resources, ..Default::default() };
    bots(b).await.create_bot(req).await.unwrap().into_inner().bot.unwrap()
}

/// Waits until the bot is running with a different task pid than `old_pid` (or any, if 0) and its agent
/// answers; returns how long that took.
async fn recovered(b: &TestBerthd, name: &str, old_pid: u32, since: Instant, within: Duration) -> Duration {
    loop {
        let bot = get(b, name).await;
        if bot.state == pb::BotState::Running as i32 && bot.pid != 0 && bot.pid != old_pid {
            let r = run(&mut b.agent(name).await, argv(&["true"])).await;
            if r.is_ok_and(|r| r.code() == Some(0)) {
                return since.elapsed();
            }
        }
        assert!(since.elapsed() < within, "{name} did not recover within {within:?}: {bot:?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends a row to the fault table.
fn record(fault: &str, seen: &str, recovery: Option<Duration>, data_lost: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    let slug: String = fault.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let rec = recovery.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    std::fs::write(dir.join(format!("{slug}.md")), format!("| {fault} | {seen} | {rec} | {data_lost} |\n")).unwrap();
}

async fn write_marker(b: &TestBerthd, name: &str) -> String {
    b.sh(name, "mkdir -p /data && head -c 100000 /dev/urandom > /data/marker && sha256sum /data/marker").await
}

async fn check_marker(b: &TestBerthd, name: &str, sum: &str) -> &'static str {
    assert_eq!(b.sh(name, "sha256sum /data/marker").await, sum, "the bot's data changed");
    "none"
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid we read from berthd (the bot's task).
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_restarted_and_reported() {
    let b = berthd();
    let bot = create(&b, "victim", None).await;
    let sum = write_marker(&b, "victim").await;
    let pid = get(&b, "victim").await.pid;
    let t = Instant::now();
    kill(pid, libc::SIGKILL);
    let took = recovered(&b, "victim", pid, t, Duration::from_secs(20)).await;
    let after = get(&b, "victim").await;
    assert!(after.restart_count >= 1, "{after:?}");
    assert!(after.last_exit.contains("signal 9"), "{after:?}");
    assert_eq!(after.ip, bot.ip, "the address changed across a restart");
    let lost = check_marker(&b, "victim", &sum).await;
    let events = b.log();
    assert!(events.contains("restarting the bot"), "{events}");
    record(
        "SIGKILL the agent (PID 1)",
        "calls fail UNAVAILABLE for a moment; `last_exit` = killed by signal 9, `restart_count` + 1",
        Some(took),
        lost,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_detected_and_restarted() {
    let b = berthd();
    create(&b, "frozen", None).await;
    let sum = write_marker(&b, "frozen").await;
    let pid = get(&b, "frozen").await.pid;
    let t = Instant::now();
    kill(pid, libc::SIGSTOP);
    // While frozen, a call with a deadline fails with DEADLINE_EXCEEDED rather than hanging.
    let mut a = b.agent("frozen").await;
    let mut req = tonic::Request::new(berth_proto::agent::v1::VersionRequest {});
    req.set_timeout(Duration::from_millis(500));
    let err = a.version(req).await.unwrap_err();
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err:?}");
    let took = recovered(&b, "frozen", pid, t, Duration::from_secs(30)).await;
    let after = get(&b, "frozen").await;
    assert!(after.restart_count >= 1, "{after:?}");
    let lost = check_marker(&b, "frozen", &sum).await;
    record(
        "SIGSTOP the agent",
        "calls with a deadline fail DEADLINE_EXCEEDED; after 3 missed health checks the bot is restarted",
        Some(took),
        lost,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_bridge_is_recreated_and_the_address_kept() {
    let b = berthd();
    let bot = create(&b, "wired", None).await;
    let gw = format!("{}.1", &b.subnet[..b.subnet.rfind('.').unwrap()]);
    // The host answers a connection to a closed port with a reset ("refused"): the path is up. (Bots have
    // no raw sockets, so no ping.)
    let ping = format!("nc -w 1 {gw} 1 2>&1 | grep -q refused");
    b.sh("wired", &ping).await;
    let t = Instant::now();
    let st = std::process::Command::new("ip").args(["link", "del", &b.bridge]).status().unwrap();
    assert!(st.success());
    let took = loop {
        let r = run(&mut b.agent("wired").await, argv(&["sh", "-c", &ping])).await.unwrap();
        if r.code() == Some(0) {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the bridge was not repaired: {}", b.log());
    };
    let after = get(&b, "wired").await;
    assert_eq!((after.ip.as_str(), after.restart_count), (bot.ip.as_str(), 0), "{after:?}");
    assert!(b.log().contains("recreated bridge"), "{}", b.log());
    record(
        "delete the bots' bridge",
        "bots lose their network until the reconciler recreates the bridge and re-attaches their veths; no restart, same IPs",
        Some(took),
        "none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_netns_mount_is_restored_from_the_task() {
    let b = berthd();
    let bot = create(&b, "nsless", None).await;
    let ns = b.dir.path().join("run/netns/nsless");
    let t = Instant::now();
    let st = std::process::Command::new("umount").arg(&ns).status().unwrap();
    assert!(st.success());
    std::fs::remove_file(&ns).unwrap();
    while !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(ns.to_str().unwrap()) {
        assert!(t.elapsed() < Duration::from_secs(20), "the namespace was not re-mounted: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    // It is the bot's own namespace: a restart keeps the address.
    let mut c = bots(&b).await;
    c.stop_bot(pb::StopBotRequest { name: "nsless".into(), timeout_ms: 0 }).await.unwrap();
    c.start_bot(pb::StartBotRequest { name: "nsless".into() }).await.unwrap();
    let out = b.sh("nsless", "ip -4 addr show eth0").await;
    assert!(out.contains(&format!("{}/", bot.ip)), "{out}");
    record(
        "remove a bot's named netns mount",
        "nothing while it runs; the reconciler re-mounts it from the task, so the next restart keeps the IP",
        Some(took),
        "none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_and_fork_bomb_hit_the_offender_not_the_agent() {
    let b = berthd();
    let limits = pb::Resources { memory_bytes: 64 << 20, pids: 64, ..Default::default() };
    create(&b, "greedy", Some(limits)).await;
    let sum = write_marker(&b, "greedy").await;
    let pid = get(&b, "greedy").await.pid;
    // What the agent runs is the OOM killer's first choice; the agent is not (it is exempt, -1000, where
    // berthd has CAP_SYS_RESOURCE; else it keeps the shim's score, 0 or 1).
    let agent_adj: i32 = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim().parse().unwrap();
    assert!(agent_adj <= 1, "the agent's OOM score adjustment is {agent_adj}");
    assert_eq!(b.sh("greedy", "cat /proc/self/oom_score_adj").await.trim(), "500");
    // What the agent starts runs in the user cgroup, limited a reserve (an eighth) below the container.
    let cgroup = |controller: &str| -> std::path::PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let v1 = text.lines().find_map(|l| l.split_once(&format!(":{controller}:")).map(|(_, p)| p.to_string()));
        match v1 {
            Some(p) => std::path::PathBuf::from(format!("/sys/fs/cgroup/{controller}{p}")),
            None => {
                let p = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
                std::path::PathBuf::from(format!("/sys/fs/cgroup{}", p.trim_end_matches("/agent")))
            }
        }
    };
    let (mem_cg, pids_cg) = (cgroup("memory"), cgroup("pids"));
    let inside = b.sh("greedy", "cat /proc/self/cgroup").await;
    let legacy: Vec<&str> = inside.lines().filter(|l| l.contains(":memory:") || l.contains(":pids:")).collect();
    let ours = if legacy.is_empty() { inside.lines().filter(|l| l.starts_with("0::")).collect() } else { legacy };
    assert!(!ours.is_empty() && ours.iter().all(|l| l.ends_with("/user")), "{inside}");
    let user_limit = |cg: &std::path::Path, v1: &str, v2: &str| -> u64 {
        let f = if cg.join("user").join(v1).exists() { cg.join("user").join(v1) } else { cg.join("user").join(v2) };
        std::fs::read_to_string(f).unwrap().trim().parse().unwrap()
    };
    assert_eq!(user_limit(&mem_cg, "memory.limit_in_bytes", "memory.max"), 56 << 20);
    assert_eq!(user_limit(&pids_cg, "pids.max", "pids.max"), 56);
    // Memory: a shell holding 200 MB in a variable, in a 64 MiB bot.
    let r = run(
        &mut b.agent("greedy").await,
        argv(&["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]),
    )
    .await
    .unwrap();
    assert_ne!(r.code(), Some(0), "the hog was not stopped: {}", r.stdout_str());
    assert!(!r.stdout_str().contains("survived"));
    // Processes: 200 sleepers in a bot limited to 64 pids. While the bomb holds every pid the user cgroup
    // allows, the agent still starts new work (from its reserve); the exec's timeout then kills the bomb.
    let mut bomb = argv(&["sh", "-c", "for i in $(seq 200); do sleep 30 & done; wait"]);
    bomb.timeout_ms = 8000;
    let mut client = b.agent("greedy").await;
    let bomb = tokio::spawn(async move { run(&mut client, bomb).await.unwrap() });
    let full = Instant::now();
    // Full: the kernel has refused the bomb a fork (pids.events counts those).
    let refused = || std::fs::read_to_string(pids_cg.join("user/pids.events")).unwrap().trim().to_string();
    while refused() == "max 0" {
        assert!(full.elapsed() < Duration::from_secs(5), "the bomb did not fill the user cgroup: {}", refused());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.sh("greedy", "echo still-serving").await, "still-serving\n");
    let r = bomb.await.unwrap();
    assert!(r.code() != Some(0), "the fork bomb was not contained");
    // The agent (PID 1) was never touched: same task, no restart, and it still serves.
    let after = get(&b, "greedy").await;
    assert_eq!((after.pid, after.restart_count), (pid, 0), "{after:?}");
    let lost = check_marker(&b, "greedy", &sum).await;
    record(
        "OOM and a fork bomb in a bot (64 MiB, 64 pids)",
        "the offending command is killed (its exec ends with a signal / fork errors); the agent keeps a reserve (user work runs in a child cgroup an eighth below the limits) and still starts commands during the bomb",
        None,
        lost,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_berthd_restarts_no_bot() {
    let mut b = berthd();
    let mut pids = Vec::new();
    for i in 0..4 {
        let name = format!("steady{i}");
        create(&b, &name, None).await;
        pids.push((name.clone(), get(&b, &name).await.pid));
    }
    b.halt(libc::SIGKILL);
    let t = Instant::now();
    b.spawn();
    for (name, pid) in &pids {
        let r = run(&mut b.agent(name).await, argv(&["true"])).await.unwrap();
        assert_eq!(r.code(), Some(0));
        let bot = get(&b, name).await;
        assert_eq!((bot.pid, bot.restart_count, bot.state), (*pid, 0, pb::BotState::Running as i32), "{bot:?}");
    }
    record(
        "SIGKILL berthd with 4 running bots, start it again",
        "calls fail UNAVAILABLE until berthd is back; no bot restarts (same task pids)",
        Some(t.elapsed()),
        "none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_containerd_costs_bots_nothing() {
    let mut b = berthd();
    create(&b, "calm", None).await;
    let sum = write_marker(&b, "calm").await;
    let pid = get(&b, "calm").await.pid;
    let t = Instant::now();
    b.containerd.restart();
    // berthd's connection to containerd comes back by itself.
    loop {
        let r = bots(&b).await.get_bot(pb::GetBotRequest { name: "calm".into(), ..Default::default() }).await;
        if r.as_ref().is_ok_and(|r| r.get_ref().bot.as_ref().is_some_and(|b| b.pid == pid)) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "berthd did not reconnect to containerd: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    let lost = check_marker(&b, "calm", &sum).await;
    assert_eq!(get(&b, "calm").await.restart_count, 0);
    record(
        "restart containerd",
        "lifecycle calls fail UNAVAILABLE while it is down; bots keep running (shims survive), exec keeps working",
        Some(took),
        lost,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_berthd_during_create_and_delete_leaves_truth_and_no_leaks() {
    let mut b = berthd();
    for (i, delay_ms) in [5u64, 25, 60].iter().enumerate() {
        let name = format!("midway{i}");
        let mut child = b.berth(&["bot", "create", &name]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        b.halt(libc::SIGKILL);
        let _ = child.wait();
        b.spawn();
        // Whatever berthd was doing, the bot is now reported truthfully and can be used or deleted.
        let got = bots(&b).await.get_bot(pb::GetBotRequest { name: name.clone(), ..Default::default() }).await;
        match got {
            Err(s) => assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}"),
            Ok(r) => {
                let bot = r.into_inner().bot.unwrap();
                let state = pb::BotState::try_from(bot.state).unwrap();
                assert!(
                    matches!(
                        state,
                        pb::BotState::Running
                            | pb::BotState::Starting
                            | pb::BotState::Stopped
                            | pb::BotState::Error
                            | pb::BotState::Creating
                    ),
                    "{bot:?}"
                );
                // Delete it, and kill berthd during that delete too.
                let mut child = b.berth(&["bot", "rm", &name]).spawn().unwrap();
                std::thread::sleep(Duration::from_millis(*delay_ms));
                b.halt(libc::SIGKILL);
                let _ = child.wait();
                b.spawn();
                let again =
                    bots(&b).await.get_bot(pb::GetBotRequest { name: name.clone(), ..Default::default() }).await;
                if again.is_ok() {
                    b.cli(&["bot", "rm", &name]);
                }
            }
        }
    }
    // SIGKILL during a start: afterwards the bot is reported as it is, and a start makes it usable.
    b.cli(&["bot", "create", "starter", "--no-start"]);
    let mut child = b.berth(&["bot", "start", "starter"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    b.halt(libc::SIGKILL);
    let _ = child.wait();
    b.spawn();
    // The reconciler brings it up (the user asked for it to run), whatever state the start was left in.
    let t = Instant::now();
    loop {
        let bot = get(&b, "starter").await;
        if bot.state == pb::BotState::Running as i32 {
            break;
        }
        // Generous: containerd may keep the bundle of the task create that berthd's death cancelled for a
        // while ("file exists"), and the reconciler retries with exponential backoff until it is gone.
        assert!(t.elapsed() < Duration::from_secs(120), "not running again: {bot:?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.sh("starter", "echo ok").await, "ok\n");
    b.cli(&["bot", "rm", "starter"]);
    // Nothing is left in containerd, on the host network or in the netns directory.
    assert!(b.containerd.ctr_ls("containers").is_empty(), "{:?}", b.containerd.ctr_ls("containers"));
    assert!(b.containerd.ctr_ls("tasks").is_empty());
    let snaps = b.containerd.ctr(&["snapshots", "ls"]);
    assert!(!snaps.contains("bot-") && !snaps.contains("berth."), "{snaps}");
    let netns: Vec<_> =
        std::fs::read_dir(b.dir.path().join("run/netns")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(netns.is_empty(), "{netns:?}");
    record(
        "SIGKILL berthd during create, start and delete",
        "the call fails; after restart the bot is reported as it is (or gone), starting it works, and deleting it leaves nothing",
        None,
        "none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_leased_to_no_bot_is_released() {
    let b = berthd();
    let bot = create(&b, "tenant", None).await;
    let dir = b.dir.path().join("state/ipam/berth");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let age =
        |p: &std::path::Path| std::fs::File::options().write(true).open(p).unwrap().set_modified(hour_ago).unwrap();
    // An old lease of a bot that exists stays; an old one of a bot that does not is released; a fresh
    // one of an unknown bot (a create in progress) is left alone.
    age(&dir.join(&bot.ip));
    let ghost = dir.join(format!("{}.250", &b.subnet[..b.subnet.rfind('.').unwrap()]));
    std::fs::write(&ghost, "ghost\neth0").unwrap();
    age(&ghost);
    let fresh = dir.join(format!("{}.251", &b.subnet[..b.subnet.rfind('.').unwrap()]));
    std::fs::write(&fresh, "newcomer\neth0").unwrap();
    let t = Instant::now();
    while ghost.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the leaked lease was not released: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    assert!(dir.join(&bot.ip).exists(), "a live bot's lease was released");
    assert!(fresh.exists(), "a fresh lease (a create in progress) was released");
    // The line is written just after the file goes.
    while !b.log().contains("released an address leased to no bot") {
        assert!(t.elapsed() < Duration::from_secs(20), "the release was not logged: {}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    record(
        "an address lease held for no bot (older than 5 min)",
        "nothing; the reconciler releases it so the address can be used again; live and fresh leases are kept",
        Some(took),
        "none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_not_the_bot() {
    // containerd's root (the bots' writable layers) on a 128 MiB tmpfs: the bot can fill it, the host stays.
    let ctd = support::containerd::PrivateContainerd::start_with_disk(Some(128));
    let b = TestBerthd::start_on(ctd, None, &["--reconcile-interval-ms", "300"]);
    create(&b, "hoarder", None).await;
    let sum = write_marker(&b, "hoarder").await;
    let pid = get(&b, "hoarder").await.pid;
    let r = run(&mut b.agent("hoarder").await, argv(&["dd", "if=/dev/zero", "of=/data/fill", "bs=1M"])).await.unwrap();
    assert_ne!(r.code(), Some(0));
    assert!(String::from_utf8_lossy(&r.stderr).contains("No space left on device"), "{r:?}");
    // The agent serves on a full disk; writes fail with a clear error.
    assert_eq!(b.sh("hoarder", "echo still-here").await, "still-here\n");
    let r = run(&mut b.agent("hoarder").await, argv(&["sh", "-c", "echo more > /data/more"])).await.unwrap();
    assert_ne!(r.code(), Some(0));
    // A snapshot needs room for its copy: it fails, saying why, and the bot is thawed and unchanged.
    let (rc, _, err) = {
        let o = b.berth(&["snapshot", "create", "hoarder", "--name", "s1"]).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_ne!(rc, Some(0));
    assert!(err.contains("no space left"), "{err}");
    assert!(err.contains("space"), "{err}");
    assert_eq!(b.sh("hoarder", "echo thawed").await, "thawed\n");
    // Room again: everything works, nothing was lost, and the bot was never restarted.
    b.sh("hoarder", "rm /data/fill").await;
    b.cli(&["snapshot", "create", "hoarder", "--name", "s1"]);
    let lost = check_marker(&b, "hoarder", &sum).await;
    let after = get(&b, "hoarder").await;
    assert_eq!((after.pid, after.restart_count), (pid, 0), "{after:?}");
    record(
        "a bot fills its disk",
        "its writes fail with ENOSPC; the agent keeps serving; a snapshot fails RESOURCE_EXHAUSTED (no room for the copy) and leaves the bot running and unchanged; after freeing space all works",
        None,
        lost,
    );
}
