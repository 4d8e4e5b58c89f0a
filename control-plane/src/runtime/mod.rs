//! The container runtime boundary. [`ContainerRuntime`] is everything the control plane asks of the
//! system that runs containers; `containerd/` is the only module that talks to containerd. Domain types
//! here say what a bot's container is, not how containerd stores it.

pub mod cgroup;
pub mod containerd;
pub mod fake;
pub mod layers;
pub mod mount;
pub mod quota;
pub mod registry;
pub mod source;
pub mod spec;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// An image the runtime has and has unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Reference, e.g. `berth/minimal:latest`.
    pub name: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Chain ID of the top layer: the parent snapshot of containers made from this image.
    pub chain_id: String,
    pub config: ImageConfig,
}

/// The parts of an image's config a container inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

/// A host directory or file bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// A bot's limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes the container's writable layer may hold (see [`quota`]).
    pub disk_bytes: Option<u64>,
}

/// Everything needed to create a bot's container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub id: String,
    pub image: Image,
    /// The process to run as PID 1 (the agent), replacing the image's entrypoint and command.
    pub args: Vec<String>,
    /// Added to the image's environment (`KEY=VALUE`).
    pub env: Vec<String>,
    pub mounts: Vec<BindMount>,
    pub limits: Limits,
    /// A network namespace to join; `None` = a fresh one with only loopback.
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub labels: HashMap<String, String>,
    /// Run on this existing writable snapshot (a bot's data found again after its container was lost)
    /// instead of a new one on the image.
    pub snapshot: Option<String>,
    /// Whether the container gets a user cgroup (see [`cgroup`]): its `cgroup.procs` files are never
    /// mounted into the container; [`ContainerRuntime::user_cgroup_procs`] opens them for the agent.
    pub user_cgroup: bool,
}

/// A started task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    /// This call created the task (else it was found running and adopted).
    pub created: bool,
}

/// What a container's writable layer holds, and whether its disk limit is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub used_bytes: Option<u64>,
    pub enforced: bool,
}

/// A task's state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Running {
        pid: u32,
    },
    Stopped {
        exit_status: u32,
    },
    /// The container exists but has no task.
    NoTask,
}

/// Label naming the bot a container or snapshot belongs to.
pub const LABEL_BOT: &str = "io.berth.bot";
/// Container label holding its writable layer's disk limit in bytes (applied at every task start).
pub const LABEL_DISK: &str = "io.berth.disk-bytes";
/// Label saying what a snapshot of ours is: [`KIND_ACTIVE`], [`KIND_SNAPSHOT`] or [`KIND_FLAT`].
pub const LABEL_KIND: &str = "io.berth.kind";
/// The writable snapshot a bot's container runs on.
pub const KIND_ACTIVE: &str = "active";
/// A user-visible, read-only snapshot of a bot.
pub const KIND_SNAPSHOT: &str = "snapshot";
/// A snapshot's layers merged into one, which a bot's writable snapshot is prepared on instead of the
/// deep original (never listed; removed once nothing is layered on it).
pub const KIND_FLAT: &str = "flat";

/// A snapshot as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub key: String,
    /// The snapshot it is layered on (an image layer or another snapshot); empty for none.
    pub parent: String,
    /// `true` once committed (read-only); `false` for an active (writable) snapshot.
    pub committed: bool,
    pub labels: HashMap<String, String>,
    pub created_at_ms: i64,
}

/// What the runtime said when a call failed (for containerd: its status code's name and message), kept
/// as the cause for the log; callers decide on [`RuntimeError`]'s variant, never on this text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Reply {
    pub code: String,
    pub message: String,
}

impl Reply {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Reply {
        Reply { code: code.into(), message: message.into() }
    }
}

/// Why a runtime call failed, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// containerd is unreachable or timed out; the call may be retried.
    #[error("containerd is unavailable while trying to {op}")]
    Unavailable {
        op: String,
        #[source]
        source: Reply,
    },
    #[error("containerd failed to {op}")]
    Failed {
        op: String,
        #[source]
        source: Reply,
    },
    #[error("image archive `{path}` is invalid: {reason}")]
    InvalidImage { path: PathBuf, reason: String },
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} while trying to {op}")]
    Timeout { op: String, after: Duration },
    /// The host's file system for bots' data is full.
    #[error("no space left on the host's disk for bots' data while trying to {op}: {detail}")]
    NoSpace { op: String, detail: String },
    /// The object is in a state that forbids the call (e.g. a snapshot that others are layered on, a
    /// task that is not paused): containerd's FailedPrecondition.
    #[error("cannot {op}: {reason}")]
    Conflict { op: String, reason: String },
}

/// What the control plane needs from a container runtime. Futures are `Send` so callers can run them
/// from any task (gRPC handlers, background loops).
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Stores an image's blobs and unpacks it; installing the same image again is a no-op.
    fn install_image(&self, source: &source::ImageSource) -> impl Future<Output = Result<Image, RuntimeError>> + Send;

    /// Reads an OCI image-layout archive and installs it.
    fn import_image(&self, archive: &std::path::Path) -> impl Future<Output = Result<Image, RuntimeError>> + Send {
        let path = archive.to_path_buf();
        async move {
            let src = tokio::task::spawn_blocking(move || source::ImageSource::from_archive(&path)).await.map_err(
                |e| RuntimeError::Io { op: "read image archive".into(), source: std::io::Error::other(e) },
            )??;
            self.install_image(&src).await
        }
    }
    /// Creates the container and its writable snapshot (no task yet).
    fn create(&self, config: &ContainerConfig) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates and starts the task (a running one is adopted); returns its pid on the host and whether
    /// this call created it.
    fn start(&self, id: &str) -> impl Future<Output = Result<Started, RuntimeError>> + Send;
    /// The user cgroup's `cgroup.procs` files of container `id`'s running task, open for writing, for the
    /// agent to join its children to (handed over once per task start; see `bots::agent_dir`). Empty when
    /// the runtime has no user cgroups.
    fn user_cgroup_procs(&self, id: &str) -> Result<Vec<std::os::fd::OwnedFd>, RuntimeError>;
    /// SIGTERM, then SIGKILL to every process after `grace`; removes the task. Returns the exit status.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<Option<u32>, RuntimeError>> + Send;
    /// Removes the task (if any), the container and its snapshot. Deleting what is gone succeeds.
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The task's state. May be answered without asking the runtime while the task's init process is
    /// known to be alive (see `containerd/live.rs`); a task that died is always reported as such.
    fn state(&self, id: &str) -> impl Future<Output = Result<TaskState, RuntimeError>> + Send;

    /// Bytes container `id`'s writable layer uses and whether a disk limit is enforced on it (`None` for
    /// the bytes when the runtime cannot tell cheaply).
    fn disk_usage(&self, id: &str) -> impl Future<Output = Result<DiskUsage, RuntimeError>> + Send;
    /// Answers when the runtime does (containerd's version), for readiness checks.
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The key of the writable snapshot container `id` runs on.
    fn container_snapshot(&self, id: &str) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Points container `id` (which must have no task) at another writable snapshot.
    fn set_container_snapshot(&self, id: &str, key: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every snapshot carrying label `key=value`.
    fn snapshots(&self, key: &str, value: &str)
    -> impl Future<Output = Result<Vec<SnapshotInfo>, RuntimeError>> + Send;
    fn snapshot(&self, key: &str) -> impl Future<Output = Result<SnapshotInfo, RuntimeError>> + Send;
    /// Bytes a snapshot's own layer uses on disk (not counting its parents).
    fn snapshot_usage(&self, key: &str) -> impl Future<Output = Result<u64, RuntimeError>> + Send;
    /// Creates a writable snapshot on `parent`, protected from containerd's garbage collector.
    fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Copies writable snapshot `active` into a new committed snapshot `key` on the same parent. When
    /// `freeze` names a container with a running task, the task is frozen during the copy so the capture is
    /// consistent, and thawed afterwards whatever happened.
    fn capture_snapshot(
        &self,
        active: &str,
        freeze: Option<&str>,
        key: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<SnapshotInfo, RuntimeError>> + Send;
    /// Makes a new committed snapshot `new_key` on `base` holding, in one layer, the files committed
    /// snapshot `key` shows through its layers above `base` (an ancestor of `key`, or `""` for none):
    /// the same tree, fewer layers. `key` is left as it was.
    fn flatten_snapshot(
        &self,
        key: &str,
        base: &str,
        new_key: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<SnapshotInfo, RuntimeError>> + Send;
    /// Removes a snapshot; [`RuntimeError::Conflict`] if others are layered on it. Removing what is gone
    /// succeeds.
    fn remove_snapshot(&self, key: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Sets (or, with an empty value, removes) labels on a snapshot.
    fn label_snapshot(
        &self,
        key: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Mounts a snapshot on the host at `target` (an empty directory): writable snapshots read-write
    /// unless `readonly`, committed ones read-only. Nothing else may have it mounted read-write.
    fn mount_snapshot(
        &self,
        key: &str,
        target: &std::path::Path,
        readonly: bool,
    ) -> impl Future<Output = Result<mount::Mounted, RuntimeError>> + Send;
    /// Thaws a frozen task (left frozen if berthd died mid-capture). Not running = nothing to do.
    fn thaw(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// How many processes of container `id`'s task the kernel's OOM killer killed (its cgroup's counter;
    /// readable until the dead task is removed). `None` when unknown.
    fn oom_kills(&self, id: &str) -> impl Future<Output = Option<u64>> + Send;
    /// How long container `id`'s task log is (it accumulates across the task's runs); 0 if none.
    fn task_log_len(&self, id: &str) -> u64;
    /// The last lines (at most `max_bytes`) of what container `id`'s task wrote to stdout and stderr after
    /// byte `from` of its log: the agent's own log, which says why it exited. `None` when there is none.
    fn task_log_tail(&self, id: &str, from: u64, max_bytes: u64) -> Option<String>;
    /// Empties every task log that holds more than `max_bytes` on disk (a PID 1 writes there for as long
    /// as it runs, and a bot can make it write without end); each emptied one's container id and what it
    /// held.
    fn trim_task_logs(&self, max_bytes: u64) -> Result<Vec<(String, u64)>, RuntimeError>;
}

/// What a runtime failure means to a caller.
impl From<RuntimeError> for crate::error::Error {
    fn from(e: RuntimeError) -> crate::error::Error {
        use crate::error::Error;
        match e {
            RuntimeError::NotFound { what } => Error::NotFound(format!("{what} not found in containerd")),
            RuntimeError::AlreadyExists { what } => {
                Error::AlreadyExists(format!("{what} already exists in containerd"))
            }
            e @ (RuntimeError::Unavailable { .. } | RuntimeError::Timeout { .. }) => {
                Error::Unavailable(crate::error::with_id(&e))
            }
            e @ RuntimeError::InvalidImage { .. } => Error::InvalidArgument(e.to_string()),
            e @ RuntimeError::NoSpace { .. } => Error::ResourceExhausted(e.to_string()),
            e => Error::internal("container runtime failure", e),
        }
    }
}
