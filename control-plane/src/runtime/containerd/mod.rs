//! containerd through `containerd-client` (v1 services only, so Debian's containerd 1.6 works). This is
//! the only module that talks to containerd. Every request carries the namespace header (and a lease header
//! when it creates content or snapshots) and a deadline; failures are classified into [`RuntimeError`].

mod container;
mod content;
mod image;
mod live;
mod snapshot;
mod task;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest};
use tonic::transport::Channel;

use std::collections::HashMap;

use super::mount::Mounted;
use super::{ContainerConfig, ContainerRuntime, Image, RuntimeError, SnapshotInfo, TaskState};

/// Snapshotter used for every bot.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Runtime (shim) used for every bot.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// Default deadline of a single containerd call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lease lives if we crash before deleting it (containerd then collects what it held).
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// A connection to containerd, scoped to one namespace.
#[derive(Debug, Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    call_timeout: Duration,
    /// Where each task's stdout and stderr go (`<log_dir>/<id>.log`, written by the shim).
    log_dir: PathBuf,
    /// Tasks known to be running (answers [`ContainerRuntime::state`] without a round trip).
    live: live::LiveTasks,
}

impl Containerd {
    /// Connects to containerd's socket; every call is made in `namespace`.
    pub async fn connect(socket: &Path, namespace: &str, log_dir: &Path) -> Result<Containerd, RuntimeError> {
        let channel = tokio::time::timeout(CALL_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| RuntimeError::Timeout { op: format!("connect to {}", socket.display()), after: CALL_TIMEOUT })?
            .map_err(|e| RuntimeError::Unavailable {
                op: format!("connect to {}", socket.display()),
                source: super::Reply::new("Unavailable", e.to_string()),
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            call_timeout: CALL_TIMEOUT,
            log_dir: log_dir.to_path_buf(),
            live: live::LiveTasks::default(),
        })
    }

    /// The log file of container `id`'s task.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request with the namespace header, an optional lease and the call deadline.
    fn request<T>(&self, msg: T, lease: Option<&str>) -> tonic::Request<T> {
        self.request_within(msg, lease, self.call_timeout)
    }

    /// [`Self::request`] with a deadline of its own, for work that grows with its input (a layer).
    fn request_within<T>(&self, msg: T, lease: Option<&str>, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        // Both values are validated ASCII (namespace and lease ids are ours).
        if let Ok(ns) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        if let Some(Ok(l)) = lease.map(str::parse) {
            r.metadata_mut().insert("containerd-lease", l);
        }
        r.set_timeout(timeout);
        r
    }

    /// Runs one call with the deadline and classifies its failure.
    async fn call<T>(
        &self,
        op: impl Into<String>,
        what: impl Into<String>,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RuntimeError> {
        self.call_within(op, what, self.call_timeout, fut).await
    }

    /// [`Self::call`] with a deadline of its own (give the request the same one).
    async fn call_within<T>(
        &self,
        op: impl Into<String>,
        what: impl Into<String>,
        timeout: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RuntimeError> {
        let op = op.into();
        match tokio::time::timeout(timeout + Duration::from_secs(1), fut).await {
            Err(_) => Err(RuntimeError::Timeout { op, after: timeout }),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(classify(op, what.into(), s)),
        }
    }

    /// Creates a lease that expires on its own if we never delete it.
    async fn lease(&self, purpose: &str) -> Result<String, RuntimeError> {
        let id = format!("berth-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let expire = std::time::SystemTime::now() + LEASE_EXPIRY;
        let labels = [("containerd.io/gc.expire".to_string(), rfc3339(expire))].into();
        let req = self.request(CreateLeaseRequest { id: id.clone(), labels }, None);
        let mut c = LeasesClient::new(self.channel.clone());
        self.call("create a lease", "lease", c.create(req)).await?;
        Ok(id)
    }

    /// Deletes a lease (what it alone held becomes collectable). Failure is logged: the lease expires.
    async fn drop_lease(&self, id: &str) {
        let req = self.request(DeleteLeaseRequest { id: id.to_string(), sync: false }, None);
        let mut c = LeasesClient::new(self.channel.clone());
        if let Err(e) = self.call("delete a lease", id, c.delete(req)).await {
            tracing::warn!(lease = id, error = %e, "failed to delete lease; it will expire");
        }
    }
}

/// containerd's status, classified: the only place its gRPC codes are read.
fn classify(op: String, what: String, s: tonic::Status) -> RuntimeError {
    let reply = || super::Reply::new(format!("{:?}", s.code()), s.message());
    match s.code() {
        tonic::Code::NotFound => RuntimeError::NotFound { what },
        tonic::Code::AlreadyExists => RuntimeError::AlreadyExists { what },
        tonic::Code::FailedPrecondition => RuntimeError::Conflict { op, reason: s.message().to_string() },
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RuntimeError::Unavailable { op, source: reply() }
        }
        // containerd passes the OS error on as text: its own disk (metadata, snapshots) is full.
        _ if s.message().contains("no space left on device") => {
            RuntimeError::NoSpace { op, detail: s.message().to_string() }
        }
        _ => RuntimeError::Failed { op, source: reply() },
    }
}

use crate::time::rfc3339;

impl ContainerRuntime for Containerd {
    async fn install_image(&self, source: &super::source::ImageSource) -> Result<Image, RuntimeError> {
        image::install(self, source).await
    }

    async fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        container::create(self, config).await
    }

    async fn start(&self, id: &str) -> Result<super::Started, RuntimeError> {
        self.live.forget(id);
        task::start(self, id).await
    }

    async fn disk_usage(&self, id: &str) -> Result<super::DiskUsage, RuntimeError> {
        let record = snapshot::container_record(self, id).await?;
        let Some(upper) = snapshot::upper_dir(self, &record.snapshot_key).await? else {
            return Ok(super::DiskUsage::default());
        };
        let Some(subvolume) = super::quota::subvolume_of(&upper) else { return Ok(super::DiskUsage::default()) };
        let used_bytes = super::quota::usage(subvolume).await;
        let enforced = used_bytes.is_some() && record.labels.contains_key(super::LABEL_DISK);
        Ok(super::DiskUsage { used_bytes, enforced })
    }

    fn user_cgroup_procs(&self, id: &str) -> Result<Vec<std::os::fd::OwnedFd>, RuntimeError> {
        super::cgroup::open_user_procs(&self.namespace, id)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<u32>, RuntimeError> {
        self.live.forget(id);
        task::stop(self, id, grace).await
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.live.forget(id);
        container::delete(self, id).await
    }

    async fn state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        if let Some(pid) = self.live.pid(id) {
            return Ok(TaskState::Running { pid });
        }
        let (state, running) = task::observe(self, id).await?;
        if let (TaskState::Running { pid }, true) = (state, running) {
            self.live.record(id, pid, &super::cgroup::container_path(&self.namespace, id));
        }
        Ok(state)
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let mut c = containerd_client::services::v1::version_client::VersionClient::new(self.channel.clone());
        self.call("read containerd's version", "containerd", c.version(self.request((), None))).await?;
        Ok(())
    }

    async fn container_snapshot(&self, id: &str) -> Result<String, RuntimeError> {
        snapshot::container_snapshot(self, id).await
    }

    async fn set_container_snapshot(&self, id: &str, key: &str) -> Result<(), RuntimeError> {
        snapshot::set_container_snapshot(self, id, key).await
    }

    async fn snapshots(&self, key: &str, value: &str) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        snapshot::list(self, key, value).await
    }

    async fn snapshot(&self, key: &str) -> Result<SnapshotInfo, RuntimeError> {
        snapshot::stat(self, key).await
    }

    async fn snapshot_usage(&self, key: &str) -> Result<u64, RuntimeError> {
        snapshot::usage(self, key).await
    }

    async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        snapshot::prepare(self, key, parent, labels).await
    }

    async fn capture_snapshot(
        &self,
        active: &str,
        freeze: Option<&str>,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<SnapshotInfo, RuntimeError> {
        snapshot::capture(self, active, freeze, key, labels).await
    }

    async fn flatten_snapshot(
        &self,
        key: &str,
        base: &str,
        new_key: &str,
        labels: HashMap<String, String>,
    ) -> Result<SnapshotInfo, RuntimeError> {
        snapshot::flatten(self, key, base, new_key, labels).await
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        snapshot::remove(self, key).await
    }

    async fn label_snapshot(&self, key: &str, labels: HashMap<String, String>) -> Result<(), RuntimeError> {
        snapshot::label(self, key, labels).await
    }

    async fn mount_snapshot(&self, key: &str, target: &Path, readonly: bool) -> Result<Mounted, RuntimeError> {
        snapshot::mount_on(self, key, target, readonly).await
    }

    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        snapshot::resume(self, id).await
    }

    fn task_log_len(&self, id: &str) -> u64 {
        std::fs::metadata(self.log_path(id)).map(|m| m.len()).unwrap_or(0)
    }

    fn trim_task_logs(&self, max_bytes: u64) -> Result<Vec<(String, u64)>, RuntimeError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let dir = &self.log_dir;
        let io = |what: String| move |e| RuntimeError::Io { op: what, source: e };
        let entries = match std::fs::read_dir(dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("list the task logs in {}", dir.display()))(e)),
        };
        let mut emptied = Vec::new();
        for e in entries {
            let e = e.map_err(io(format!("list the task logs in {}", dir.display())))?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")) else { continue };
            // Not following a link (the directory is berthd's, but nothing here is followed); what the
            // file holds on disk: the shim may write at its own offset after a trim, leaving a hole.
            let Ok(m) = e.metadata() else { continue };
            let held = m.blocks() * 512;
            if !m.is_file() || held <= max_bytes {
                continue;
            }
            let path = e.path();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io(format!("open the task log {}", path.display())))?;
            f.set_len(0).map_err(io(format!("empty the task log {}", path.display())))?;
            emptied.push((id.to_string(), held));
        }
        Ok(emptied)
    }

    fn task_log_tail(&self, id: &str, from: u64, max_bytes: u64) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.log_path(id)).ok()?;
        let len = f.metadata().ok()?.len();
        // A log shorter than `from` was started afresh: all of it is new.
        let from = if len < from { 0 } else { from };
        let start = len.saturating_sub(max_bytes).max(from);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        // Whole lines only, unless one line is all there is.
        let text = if start > from { text.split_once('\n').map_or(&*text, |(_, rest)| rest) } else { &text };
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    async fn oom_kills(&self, id: &str) -> Option<u64> {
        // The cgroup path is the one spec.rs gives runc; v2 (unified) or v1 (the memory controller).
        let rel = crate::runtime::cgroup::container_path(&self.namespace, id);
        let read = |path: String| -> Option<u64> {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
        };
        // v2's counter includes the user cgroup below; v1 counts per cgroup, so the user cgroup's (where
        // the bot's processes run) is added.
        read(format!("/sys/fs/cgroup/{rel}/memory.events")).or_else(|| {
            let own = read(format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"))?;
            Some(own + read(format!("/sys/fs/cgroup/memory/{rel}/user/memory.oom_control")).unwrap_or(0))
        })
    }
}
