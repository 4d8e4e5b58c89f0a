//! Test harness: starts the real `berth-agent` binary on a Unix socket in a temporary directory, with a
//! fresh token and its own root, and connects the real client to it.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A running agent and everything it owns.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub token: String,
    pub child: Option<Child>,
}

impl TestAgent {
    /// Starts an agent as root with `<tmp>/root` as its root and `/data` inside it.
    pub async fn start() -> TestAgent {
        Self::start_as(None).await
    }

    /// Starts an agent, optionally as another uid (its root and socket directory are made usable).
    pub async fn start_as(uid: Option<u32>) -> TestAgent {
        Self::start_with(uid, &[]).await
    }

    /// Starts an agent with extra command-line arguments.
    pub async fn start_with(uid: Option<u32>, extra: &[&str]) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("data")).expect("mkdir root/data");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("mkdir run");
        let token = format!("test-token-{}", uuid::Uuid::new_v4().simple());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token).expect("write token");
        if let Some(uid) = uid {
            for p in [&root.join("data"), &run, &token_file] {
                std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown for test user");
            }
        }
        let socket = run.join("agent.sock");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--socket").arg(&socket).arg("--token-file").arg(&token_file).arg("--root").arg(&root).args(extra);
        // The agent's log goes to <tmp>/agent.log.
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("create agent.log");
        cmd.env("BERTH_AGENT_LOG", "info,berth_agent=debug").stdout(Stdio::null()).stderr(log);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("spawn berth-agent");
        let agent = TestAgent { dir, root, socket, token, child: Some(child) };
        agent.wait_ready().await;
        agent
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.socket.exists()
                && let Ok(mut c) = self.try_client().await
                && c.version(pb::VersionRequest {}).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("berth-agent did not answer on {} within 10 s", self.socket.display());
    }

    async fn try_client(&self) -> Result<AgentClient, agent_client::ConnectError> {
        agent_client::connect_unix(&self.socket, BearerAuth::new(&self.token).expect("token")).await
    }

    /// A client with the right token.
    pub async fn client(&self) -> AgentClient {
        self.try_client().await.expect("connect to agent")
    }

    /// A client presenting `token`.
    pub async fn client_with_token(&self, token: &str) -> AgentClient {
        agent_client::connect_unix(&self.socket, BearerAuth::new(token).expect("token")).await.expect("connect")
    }

    /// Host path of a path inside the agent's root.
    pub fn host(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the agent to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait agent") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth-agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// Polls `f` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Result of running a command to completion.
#[derive(Debug, Default)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub started: Option<pb::Started>,
    pub exited: Option<pb::Exited>,
}

impl ExecResult {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.exited.as_ref().and_then(|e| e.exit_code)
    }
    pub fn reason(&self) -> pb::ExitReason {
        pb::ExitReason::try_from(self.exited.as_ref().expect("exited").reason).expect("known reason")
    }
}

pub fn start_frame(start: pb::ExecStart) -> pb::ExecRequest {
    pb::ExecRequest { frame: Some(pb::exec_request::Frame::Start(start)) }
}

pub fn argv(args: &[&str]) -> pb::ExecStart {
    pb::ExecStart { argv: args.iter().map(|s| s.to_string()).collect(), close_stdin: true, ..Default::default() }
}

/// Opens an exec stream; returns the request sender (keep it to keep stdin open) and the response stream.
pub async fn exec_open(
    client: &mut AgentClient,
    start: pb::ExecStart,
) -> Result<(mpsc::Sender<pb::ExecRequest>, tonic::Streaming<pb::ExecResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(start_frame(start)).await.expect("send start");
    let resp = client.exec(ReceiverStream::new(rx)).await?;
    Ok((tx, resp.into_inner()))
}

/// Reads an exec stream to its end (with a deadline).
pub async fn collect(stream: &mut tonic::Streaming<pb::ExecResponse>) -> Result<ExecResult, tonic::Status> {
    let mut r = ExecResult::default();
    let fut = async {
        while let Some(msg) = stream.message().await? {
            match msg.frame {
                Some(pb::exec_response::Frame::Started(s)) => r.started = Some(s),
                Some(pb::exec_response::Frame::Stdout(b)) => r.stdout.extend(b),
                Some(pb::exec_response::Frame::Stderr(b)) => r.stderr.extend(b),
                Some(pb::exec_response::Frame::Exited(e)) => {
                    assert!(r.exited.is_none(), "two exited frames");
                    r.exited = Some(e);
                }
                None => {}
            }
        }
        Ok::<_, tonic::Status>(())
    };
    tokio::time::timeout(Duration::from_secs(60), fut).await.expect("exec stream did not end within 60 s")?;
    Ok(r)
}

/// Runs a command to completion.
pub async fn run(client: &mut AgentClient, start: pb::ExecStart) -> Result<ExecResult, tonic::Status> {
    let (_tx, mut stream) = exec_open(client, start).await?;
    collect(&mut stream).await
}

/// Path of a test fixture (they live in `agent/tests/fixtures`).
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures").join(name).display().to_string()
}

/// The agent binary: `BERTH_AGENT_BIN` if set; else cargo's own path inside the agent package; elsewhere the one beside the test
/// binary's target directory (built by `cargo build --workspace`, as scripts/test.sh does first).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_AGENT_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_berth-agent") {
        return PathBuf::from(p);
    }
    target_bin("berth-agent")
}

/// A workspace binary in the same target directory as the running test.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build the workspace first (`cargo build --workspace`)", p.display());
    p
}

/// The MCP acceptance probe: `BERTH_MCP_PROBE`, or `shared/tools/mcp_probe.py` beside the repository
/// (as CI lays it out).
pub fn mcp_probe_script() -> PathBuf {
    let p = std::env::var_os("BERTH_MCP_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/mcp_probe.py"));
    assert!(p.exists(), "{} is missing: the probe comes from the shared reference tools", p.display());
    p
}

/// Runs the probe `args` (the probe script or a wrapper first) with the test venv's Python; returns its
/// summary line ("N passed, N failed[, N skipped]") and its whole output.
pub fn run_mcp_probe<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (String, String) {
    let out = Command::new(dep("venv/bin/python")).args(args).output().expect("run the MCP probe");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout.lines().rev().find(|l| l.contains(" passed, ")).unwrap_or("").trim().to_string();
    (summary, format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// Path of a file under the workspace's `.deps` (installed by scripts/install-deps.sh); panics loudly
/// when missing, since tests never skip silently.
pub fn dep(rel: &str) -> PathBuf {
    let base = std::env::var_os("BERTH_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps"));
    let p = base.join(rel);
    assert!(p.exists(), "{} is missing: run scripts/install-deps.sh (or scripts/test.sh)", p.display());
    p
}
