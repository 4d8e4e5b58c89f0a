//! berthd for tests: the real binary on a private containerd, with its own state and run directories,
//! the minimal image imported, and the database the test chooses. Stopped when dropped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::containerd::{PrivateContainerd, minimal_image};

pub struct TestBerthd {
    pub containerd: PrivateContainerd,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// This instance's own bridge and subnet (tests run in parallel).
    pub bridge: String,
    pub subnet: String,
    args: Vec<std::ffi::OsString>,
    child: Option<Child>,
}

impl TestBerthd {
    /// Starts berthd; `database_url` = None means its default (SQLite in its state directory).
    pub fn start(database_url: Option<String>) -> TestBerthd {
        Self::start_with(database_url, &[])
    }

    /// Starts berthd with extra arguments.
    pub fn start_with(database_url: Option<String>, extra: &[&str]) -> TestBerthd {
        let containerd = PrivateContainerd::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/berthd.sock");
        let id = uuid::Uuid::new_v4();
        let bytes = id.as_bytes();
        let bridge = format!("bt{}", &id.simple().to_string()[..8]);
        let subnet = format!("10.{}.{}.0/24", 100 + bytes[0] % 100, bytes[1]);
        let mut cmd = Command::new("unused");
        cmd.arg("--containerd-socket")
            .arg(&containerd.socket)
            .args(["--namespace", &containerd.namespace])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--image-archive")
            .arg(minimal_image())
            .args(["--stop-timeout-ms", "5000", "--bridge", &bridge, "--subnet", &subnet])
            .args(extra);
        if let Some(url) = database_url {
            cmd.args(["--database-url", &url]);
        }
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let mut b = TestBerthd { containerd, dir, socket, bridge, subnet, args, child: None };
        b.spawn();
        b
    }

    /// Starts the berthd process (again) on the same state, and waits until it listens.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "berthd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .expect("berthd log");
        let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start berthd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "berthd did not listen within 60 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops berthd with `signal` (SIGKILL to simulate a crash); bots keep running.
    pub fn halt(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, signal);
        }
        // A killed berthd leaves its socket behind; the next one replaces it.
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// The `berth` CLI pointed at this berthd.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_ADDR", &self.socket).args(args).stdin(Stdio::null());
        c
    }
}

impl Drop for TestBerthd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, libc::SIGTERM);
        }
        // Network namespaces a failed test left, and this instance's bridge (CNI DEL keeps bridges).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().display().to_string();
            for t in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&root)) {
                let _ = Command::new("umount").args(["-l", t]).status();
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}
