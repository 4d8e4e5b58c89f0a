//! The devenv compose stack without a Docker engine: its compose file is checked by a real compose
//! parser (Debian's docker-compose, which validates without an engine), and its entrypoint runs natively
//! as the compose service would, against a real PostgreSQL: migration step, start, a bot, SIGTERM, a
//! "container restart" (everything the container ran is killed), and start again with the bot's data.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::support;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::containerd::{kill_bot_processes, minimal_image, remove_cgroups};
use support::postgres::PrivatePostgres;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_compose_file_is_valid_and_wires_the_stack() {
    let compose = repo().join("devenv/docker-compose.yml");
    let run = |args: &[&str]| {
        let o = Command::new("docker-compose")
            .arg("-f")
            .arg(&compose)
            .args(args)
            .output()
            .expect("docker-compose is not installed: run scripts/install-deps.sh");
        assert!(o.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(&["config", "-q"]);
    let services: Vec<String> = run(&["config", "--services"]).lines().map(String::from).collect();
    for s in ["postgres", "migrate", "berthd"] {
        assert!(services.contains(&s.to_string()), "{services:?}");
    }
    let config = run(&["config"]);
    for needle in [
        "pg_isready",
        "condition: service_healthy",
        "condition: service_completed_successfully",
        "privileged: true",
        "--migrate",
        "/readyz",
        "dockerfile: devenv/Dockerfile",
    ] {
        assert!(config.contains(needle), "the compose file lacks {needle:?}:\n{config}");
    }
    // The files the compose file and the Dockerfile name exist.
    for f in ["devenv/Dockerfile", "devenv/entrypoint.sh", "devenv/dev-api-tokens"] {
        assert!(repo().join(f).exists(), "{f} is missing");
    }
}

/// The entrypoint, run natively with the environment the compose service gives it (paths moved under
/// a temporary directory, names unique to this test).
struct Service {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    namespace: String,
    bridge: String,
}

impl Service {
    fn new(database_url: String) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let id = uuid::Uuid::new_v4();
        let namespace = format!("berth-test-{}", &id.simple().to_string()[..12]);
        let bridge = format!("bd{}", &id.simple().to_string()[..8]);
        let subnet = format!("10.{}.{}.0/24", 100 + id.as_bytes()[0] % 100, id.as_bytes()[1]);
        let bin = Path::new(env!("CARGO_BIN_EXE_berthd")).parent().unwrap().to_path_buf();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let env = [
            ("PATH", path),
            ("BERTH_DATABASE_URL", database_url),
            ("BERTH_CONTAINERD_ROOT", d.join("containerd-root").display().to_string()),
            ("BERTH_CONTAINERD_STATE", d.join("containerd-state").display().to_string()),
            ("BERTH_STATE_DIR", d.join("state").display().to_string()),
            ("BERTH_RUN_DIR", d.join("run").display().to_string()),
            ("BERTH_NAMESPACE", namespace.clone()),
            ("BERTH_BRIDGE", bridge.clone()),
            ("BERTH_SUBNET", subnet),
            ("BERTH_IMAGE_ARCHIVES", minimal_image().display().to_string()),
            ("BERTH_METRICS_LISTEN", "127.0.0.1:0".into()),
            ("BERTH_RECONCILE_INTERVAL_MS", "300".into()),
            ("BERTH_LOG_FORMAT", "json".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        Service { dir, env, namespace, bridge }
    }

    fn entrypoint(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(repo().join("devenv/entrypoint.sh")).args(args).env_clear().envs(self.env.iter().cloned());
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/berthd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Starts the service and waits until berthd answers.
    fn start(&self) -> Running {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("service.log")).unwrap();
        let mut child = self.entrypoint(&[]).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "the entrypoint exited:\n{}", self.log());
            assert!(t.elapsed() < Duration::from_secs(60), "berthd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Running(Some(child))
    }

    /// SIGTERM, as `docker stop` sends; the entrypoint must stop berthd and containerd and exit 0.
    fn stop(&self, mut running: Running) {
        let Some(mut child) = running.0.take() else { return };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the entrypoint did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}:\n{}", self.log());
        assert!(self.log().contains("berth-entrypoint: stopped"), "{}", self.log());
        assert!(std::os::unix::net::UnixStream::connect(self.socket()).is_err(), "berthd still answers");
        let sock = self.dir.path().join("containerd-state/containerd.sock");
        assert!(std::os::unix::net::UnixStream::connect(sock).is_err(), "containerd still answers");
    }

    /// What stopping the container does beyond the entrypoint: every process in it dies (shims, bots).
    fn kill_the_rest(&self) {
        kill_bot_processes(&self.namespace);
        let _ = Command::new("pkill").args(["-KILL", "-f", "--", &format!("-namespace {} ", self.namespace)]).status();
        std::thread::sleep(Duration::from_millis(200));
    }

    fn berth(&self, args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_ADDR", self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "berth {args:?}: {}\n{}", String::from_utf8_lossy(&o.stderr), self.log());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The running entrypoint. A test that fails before stopping it still stops it (SIGTERM, as `docker
/// stop` sends, then SIGKILL): otherwise its berthd and containerd outlive the test.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take()
            && child.try_wait().ok().flatten().is_none()
        {
            support::stop_child(&mut child, libc::SIGTERM);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_the_rest();
        support::unmount_under(self.dir.path());
        remove_cgroups(&self.namespace);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        support::remove_firewall(&self.bridge);
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

#[test]
fn the_entrypoint_runs_the_stack_natively_and_restarts_cleanly() {
    let pg = PrivatePostgres::start();
    let svc = Service::new(pg.database("berth"));
    // The compose `migrate` step: the entrypoint runs its arguments.
    let o = svc.entrypoint(&["berthd", "--migrate"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the database schema is current"));

    let child = svc.start();
    svc.berth(&["bot", "create", "dev1"]);
    let sum =
        svc.berth(&["exec", "dev1", "--", "sh", "-c", "head -c 50000 /dev/urandom > /data/m && sha256sum /data/m"]);
    svc.stop(child);
    svc.kill_the_rest();

    // The container starts again on the same volumes: the bot comes back with its data.
    let child = svc.start();
    let t = Instant::now();
    loop {
        let bot: serde_json::Value = serde_json::from_str(&svc.berth(&["bot", "get", "dev1", "--json"])).unwrap();
        if bot["state"] == "running" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "dev1 did not come back: {bot}\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(svc.berth(&["exec", "dev1", "--", "sha256sum", "/data/m"]), sum);
    svc.berth(&["bot", "rm", "dev1"]);
    svc.stop(child);
}
