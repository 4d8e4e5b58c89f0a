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
    /// API token the CLI and clients send (when berthd was given a token file).
    pub token: Option<String>,
    /// Files berthd reads that live as long as it does (the token file of [`Self::start_mcp`]).
    files: Option<tempfile::TempDir>,
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
        Self::start_on(PrivateContainerd::start(), database_url, extra)
    }

    /// Starts berthd with the `full` image too, API tokens (`tokens` is the token file's text; the first
    /// line's token becomes [`Self::token`]) and the MCP front-end on a loopback port, plus `extra`.
    pub fn start_mcp(tokens: &str, extra: &[&str]) -> TestBerthd {
        let files = tempfile::tempdir().expect("tempdir");
        let file = files.path().join("tokens");
        std::fs::write(&file, tokens).expect("write the token file");
        let image = super::containerd::full_image();
        let mut args = vec!["--image-archive", image.to_str().expect("utf-8 path")];
        args.extend(["--api-token-file", file.to_str().expect("utf-8 path"), "--mcp-listen", "127.0.0.1:0"]);
        args.extend(extra);
        let mut b = Self::start_with(None, &args);
        b.token = tokens.split_whitespace().next().map(String::from);
        b.files = Some(files);
        b
    }

    /// Starts berthd on the given containerd, with extra arguments.
    pub fn start_on(containerd: PrivateContainerd, database_url: Option<String>, extra: &[&str]) -> TestBerthd {
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
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra);
        if let Some(url) = database_url {
            cmd.args(["--database-url", &url]);
        }
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let mut b = TestBerthd { containerd, dir, socket, bridge, subnet, token: None, files: None, args, child: None };
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
        // berthd renames its socket into place once it listens; a connection proves it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("berthd exited ({status}) before listening:\n{}", self.log());
            }
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

    /// A second berthd command on this instance's state and socket (to test that it refuses to start).
    pub fn second_instance(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berthd"));
        c.args(&self.args).stdin(Stdio::null());
        c
    }

    /// berthd's arguments, to change before the next [`spawn`](Self::spawn).
    pub fn args_mut(&mut self) -> &mut Vec<std::ffi::OsString> {
        &mut self.args
    }

    /// Where this berthd serves metrics (read from its log: it listens on a free port).
    pub fn metrics_addr(&self) -> String {
        self.listening("metrics")
    }

    /// The address of the MCP front-end (`--mcp-listen`), from the log.
    pub fn mcp_addr(&self) -> String {
        self.listening("mcp")
    }

    fn listening(&self, what: &str) -> String {
        let log = self.log();
        let needle = format!("{what} listening");
        let line = log.lines().rev().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {needle} in the log"));
        line.split("addr=").nth(1).expect("addr field").split_whitespace().next().expect("address").to_string()
    }

    /// Puts server-everything (from the host's test dependencies) into `bot`'s /data through the import
    /// API; returns the path of its entry point in the bot.
    pub async fn install_everything(&self, bot: &str) -> String {
        let modules = crate::common::dep("node/node_modules");
        self.import_paths(bot, &[(modules, "data/mcp/node_modules")]).await;
        "/data/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js".into()
    }

    /// Imports host files and directories into `bot` (merged into /data): (host path, `data/…` path).
    pub async fn import_paths(&self, bot: &str, paths: &[(PathBuf, &str)]) {
        use berth_proto::controlplane::v1 as pb;
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        for (host, inside) in paths {
            if host.is_dir() {
                tar.append_dir_all(inside, host).expect("archive a directory");
            } else {
                tar.append_path_with_name(host, inside).expect("archive a file");
            }
        }
        let archive = tar.into_inner().expect("archive");
        let mut msgs = vec![pb::ImportDataChunk { bot: bot.into(), unverified: true, ..Default::default() }];
        msgs.extend(archive.chunks(1 << 20).map(|c| pb::ImportDataChunk { data: c.to_vec(), ..Default::default() }));
        let ch = berth_control_plane::agent_client::channel(self.socket.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        pb::data_service_client::DataServiceClient::with_interceptor(ch, self.auth())
            .import_data(tokio_stream::iter(msgs))
            .await
            .expect("import into the bot");
    }

    /// berthd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// The `berth` CLI pointed at this berthd.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_ADDR", &self.socket).args(args).stdin(Stdio::null());
        if let Some(t) = &self.token {
            c.env("BERTH_TOKEN", t);
        }
        c
    }
}

impl Drop for TestBerthd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, libc::SIGTERM);
        }
        // Network namespaces a failed test left, and this instance's bridge (CNI DEL keeps bridges).
        super::unmount_under(self.dir.path());
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        super::remove_firewall(&self.bridge);
    }
}

impl TestBerthd {
    /// An agent-protocol client for `bot`, through this berthd.
    pub async fn agent(&self, bot: &str) -> berth_control_plane::agent_client::AgentClient {
        use berth_control_plane::agent_client;
        let ch = agent_client::channel(self.socket.to_str().expect("utf-8 path")).await.expect("connect to berthd");
        agent_client::agent_on(ch, self.auth().with_bot(bot).expect("bot name"))
    }

    /// A BotService client through this berthd, with [`Self::token`].
    pub async fn bots(
        &self,
    ) -> berth_proto::controlplane::v1::bot_service_client::BotServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            berth_control_plane::agent_client::BearerAuth,
        >,
    > {
        use berth_control_plane::agent_client;
        let ch = agent_client::channel(self.socket.to_str().expect("utf-8 path")).await.expect("connect to berthd");
        berth_proto::controlplane::v1::bot_service_client::BotServiceClient::with_interceptor(ch, self.auth())
    }

    /// The bearer credentials of [`Self::token`].
    pub fn auth(&self) -> berth_control_plane::agent_client::BearerAuth {
        use berth_control_plane::agent_client::BearerAuth;
        self.token.as_deref().map_or_else(BearerAuth::none, |t| BearerAuth::new(t).expect("printable token"))
    }

    /// Runs a shell script in `bot`; returns its stdout, failing the test on a non-zero exit.
    pub async fn sh(&self, bot: &str, script: &str) -> String {
        let r = crate::common::run(&mut self.agent(bot).await, crate::common::argv(&["sh", "-c", script]))
            .await
            .expect("exec");
        assert_eq!(r.code(), Some(0), "script failed: {script}\n{}", String::from_utf8_lossy(&r.stderr));
        r.stdout_str()
    }

    /// Runs `berth ARGS`; returns its stdout, failing the test (with berthd's log) if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = self.berth(args).output().expect("run berth");
        assert!(
            o.status.success(),
            "berth {args:?} failed: {}\n--- berthd log ---\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Every entry under the bot's /data: type, path, mode, link count and sha256, or link target.
    pub async fn fingerprint(&self, bot: &str) -> String {
        let fp = self.sh(bot, FINGERPRINT).await;
        assert!(fp.lines().count() > 1, "suspiciously little data in {bot}: {fp}");
        fp
    }
}

const FINGERPRINT: &str = r#"cd /data && find . | sort | while read -r f; do
  if [ -L "$f" ]; then echo "L $f -> $(readlink "$f")";
  elif [ -d "$f" ]; then echo "D $f $(stat -c %a "$f")";
  else echo "F $f $(stat -c %a "$f") $(stat -c %h "$f") $(sha256sum < "$f" | cut -d' ' -f1)"; fi
done"#;
