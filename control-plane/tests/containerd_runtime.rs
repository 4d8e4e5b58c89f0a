//! The containerd runtime against a real, private containerd: import the minimal image (content store +
//! unpack, no `ctr`), run the agent as PID 1 in a container with cgroup limits, reach it through the
//! bind-mounted socket, stop (graceful and forced), restart with data kept, and delete leaving nothing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_control_plane::runtime::containerd::Containerd;
use berth_control_plane::runtime::{BindMount, ContainerConfig, ContainerRuntime, Image, Limits, TaskState};
use berth_proto::agent::v1 as pb;
use common::{argv, run};
use support::containerd::{PrivateContainerd, minimal_image};

struct Bot {
    dir: tempfile::TempDir,
    token: String,
}

impl Bot {
    fn new() -> Bot {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("bot-token-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(dir.path().join("token"), &token).unwrap();
        Bot { dir, token }
    }

    fn config(&self, id: &str, image: &Image, args: Vec<String>) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            image: image.clone(),
            args,
            env: vec!["BERTH_AGENT_LOG=info".into()],
            mounts: vec![BindMount {
                source: self.dir.path().to_path_buf(),
                destination: "/run/berth".into(),
                readonly: false,
            }],
            limits: Limits { memory_bytes: Some(256 << 20), cpu_millis: Some(500), pids: Some(512), disk_bytes: None },
            netns: None,
            hostname: id.into(),
            labels: [("io.berth.test".to_string(), "1".to_string())].into(),
            snapshot: None,
            user_cgroup: false,
        }
    }

    /// Connects once the agent answers (with a deadline).
    async fn client(&self) -> AgentClient {
        let socket = self.dir.path().join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut c) = agent_client::connect_unix(&socket, BearerAuth::new(&self.token).unwrap()).await
                && c.version(pb::VersionRequest {}).await.is_ok()
            {
                return c;
            }
            assert!(Instant::now() < deadline, "the agent in the container did not answer within 15 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn agent_args() -> Vec<String> {
    ["/sbin/berth-agent", "--socket", "/run/berth/agent.sock", "--token-file", "/run/berth/token"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

async fn sh(c: &mut AgentClient, script: &str) -> String {
    let r = run(c, argv(&["sh", "-c", script])).await.unwrap();
    assert_eq!(r.code(), Some(0), "{script}: {}", String::from_utf8_lossy(&r.stderr));
    r.stdout_str().trim().to_string()
}

#[tokio::test]
async fn agent_runs_as_pid_1_with_limits_and_data_survives_a_restart() {
    let ctd_proc = PrivateContainerd::start();
    let ctd =
        Containerd::connect(&ctd_proc.socket, &ctd_proc.namespace, &ctd_proc.dir.path().join("logs")).await.unwrap();
    let image = ctd.import_image(&minimal_image()).await.unwrap();
    assert_eq!(image.name, "berth/minimal:latest");
    assert_eq!(image.config.entrypoint, ["/sbin/berth-agent"]);
    // Importing again is a no-op with the same result.
    assert_eq!(ctd.import_image(&minimal_image()).await.unwrap(), image);
    assert!(ctd_proc.ctr_ls("images").contains(&image.name));

    let bot = Bot::new();
    ctd.create(&bot.config("bot-1", &image, agent_args())).await.unwrap();
    assert_eq!(ctd.state("bot-1").await.unwrap(), TaskState::NoTask);
    let pid = ctd.start("bot-1").await.unwrap().pid;
    assert!(pid > 1);
    assert_eq!(ctd.state("bot-1").await.unwrap(), TaskState::Running { pid });
    let mut c = bot.client().await;
    assert_eq!(sh(&mut c, "cat /proc/1/comm").await, "berth-agent");
    assert_eq!(c.stats(pb::StatsRequest {}).await.unwrap().into_inner().pid, 1);
    assert_eq!(sh(&mut c, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes").await, (256u64 << 20).to_string());
    assert_eq!(sh(&mut c, "cat /sys/fs/cgroup/pids/pids.max").await, "512");
    assert_eq!(sh(&mut c, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us").await, "50000");
    assert_eq!(sh(&mut c, "hostname").await, "bot-1");
    let w = pb::WriteFileRequest { path: "memory.md".into(), content: b"remember me".to_vec(), ..Default::default() };
    c.write_file(w).await.unwrap();

    // Graceful stop: the agent handles SIGTERM and exits 0.
    let status = ctd.stop("bot-1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(status, Some(0));
    assert_eq!(ctd.state("bot-1").await.unwrap(), TaskState::NoTask);

    // Same container, new task: /data kept.
    ctd.start("bot-1").await.unwrap();
    let mut c = bot.client().await;
    let r = c.read_file(pb::ReadFileRequest { path: "/data/memory.md".into(), ..Default::default() }).await.unwrap();
    assert_eq!(r.into_inner().content, b"remember me");

    ctd.delete("bot-1").await.unwrap();
    assert!(!ctd_proc.ctr_ls("containers").contains(&"bot-1".to_string()));
    assert!(ctd_proc.ctr_ls("tasks").is_empty());
    assert!(!ctd_proc.ctr_ls("snapshots").contains(&"bot-1".to_string()), "the container snapshot leaked");
    // Deleting again is fine.
    ctd.delete("bot-1").await.unwrap();
}

/// A running task's state is answered from what berthd saw (containerd frozen: still answered), and a task
/// whose process dies behind berthd's back is reported dead, never from that memory.
#[tokio::test]
async fn a_running_tasks_state_is_remembered_and_a_dead_one_never_is() {
    let ctd_proc = PrivateContainerd::start();
    let ctd =
        Containerd::connect(&ctd_proc.socket, &ctd_proc.namespace, &ctd_proc.dir.path().join("logs")).await.unwrap();
    let image = ctd.import_image(&minimal_image()).await.unwrap();
    let bot = Bot::new();
    ctd.create(&bot.config("bot-live", &image, agent_args())).await.unwrap();
    let pid = ctd.start("bot-live").await.unwrap().pid;
    assert_eq!(ctd.state("bot-live").await.unwrap(), TaskState::Running { pid });

    // containerd stopped (SIGSTOP): a call to it would hang until its deadline; the remembered answer does not.
    let containerd = ctd_proc.pid() as libc::pid_t;
    unsafe { libc::kill(containerd, libc::SIGSTOP) };
    let remembered = tokio::time::timeout(Duration::from_secs(5), ctd.state("bot-live")).await;
    unsafe { libc::kill(containerd, libc::SIGCONT) };
    assert_eq!(remembered.expect("state answered while containerd was frozen").unwrap(), TaskState::Running { pid });

    // The task's init killed behind berthd's back: the next answer is containerd's, and says so.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let s = ctd.state("bot-live").await.unwrap();
        if s != (TaskState::Running { pid }) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state, TaskState::Stopped { exit_status: 137 });

    // Started again: the new task's pid, not the old one.
    let pid2 = ctd.start("bot-live").await.unwrap().pid;
    assert_ne!(pid2, pid);
    assert_eq!(ctd.state("bot-live").await.unwrap(), TaskState::Running { pid: pid2 });
    ctd.delete("bot-live").await.unwrap();
    assert_eq!(ctd.state("bot-live").await.unwrap(), TaskState::NoTask);
}

#[tokio::test]
async fn stop_kills_a_task_that_ignores_sigterm_after_the_grace_period() {
    let ctd_proc = PrivateContainerd::start();
    let ctd =
        Containerd::connect(&ctd_proc.socket, &ctd_proc.namespace, &ctd_proc.dir.path().join("logs")).await.unwrap();
    let image = ctd.import_image(&minimal_image()).await.unwrap();
    let bot = Bot::new();
    let stubborn = vec!["/bin/sh".into(), "-c".into(), "trap '' TERM; while :; do sleep 1; done".into()];
    ctd.create(&bot.config("stubborn", &image, stubborn)).await.unwrap();
    ctd.start("stubborn").await.unwrap();
    let t = Instant::now();
    let status = ctd.stop("stubborn", Duration::from_millis(500)).await.unwrap();
    assert_eq!(status, Some(137), "killed by SIGKILL");
    assert!(t.elapsed() >= Duration::from_millis(500));
    ctd.delete("stubborn").await.unwrap();
    assert!(ctd_proc.ctr_ls("containers").is_empty());
}

#[tokio::test]
async fn a_broken_archive_is_a_clear_error_and_leaves_nothing() {
    let ctd_proc = PrivateContainerd::start();
    let ctd =
        Containerd::connect(&ctd_proc.socket, &ctd_proc.namespace, &ctd_proc.dir.path().join("logs")).await.unwrap();
    let bad = ctd_proc.dir.path().join("bad.tar");
    std::fs::write(&bad, b"this is not a tar archive at all, not even close......").unwrap();
    let err = ctd.import_image(&bad).await.unwrap_err().to_string();
    assert!(err.contains("index.json is missing") || err.contains("read image archive"), "{err}");
    assert!(ctd_proc.ctr_ls("images").is_empty());
    let err = ctd.import_image(&ctd_proc.dir.path().join("missing.tar")).await.unwrap_err().to_string();
    assert!(err.contains("missing.tar"), "{err}");
}
