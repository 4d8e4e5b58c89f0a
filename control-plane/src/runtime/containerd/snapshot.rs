//! A bot's snapshots in containerd's overlayfs snapshotter: listing by label, capture (copy a writable
//! snapshot's own layer into a new committed one, the task frozen meanwhile), removal, labels, and
//! mounting any of them on the host. Every snapshot we keep carries `containerd.io/gc.root`, so containerd's
//! garbage collector never takes it, whether or not a container still references it; temporary ones are
//! made under a lease, so a crash leaves nothing that is not collected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, GetContainerRequest, PauseTaskRequest, ResumeTaskRequest, UpdateContainerRequest,
};
use containerd_client::types::Mount;
use prost_types::FieldMask;

use super::{Containerd, SNAPSHOTTER, rfc3339};
use crate::runtime::mount::{self, MountSpec, Mounted};
use crate::runtime::{RuntimeError, SnapshotInfo};

/// containerd's label making an object a garbage-collection root.
const GC_ROOT: &str = "containerd.io/gc.root";
/// Longest a capture's copy may take (the bot is frozen meanwhile).
const COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn client(ctd: &Containerd) -> SnapshotsClient<tonic::transport::Channel> {
    SnapshotsClient::new(ctd.channel.clone())
}

fn info(i: Info) -> SnapshotInfo {
    SnapshotInfo {
        committed: i.kind == Kind::Committed as i32,
        created_at_ms: i.created_at.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        key: i.name,
        parent: i.parent,
        labels: i.labels,
    }
}

fn spec(m: Mount) -> MountSpec {
    MountSpec { kind: m.r#type, source: m.source, options: m.options }
}

/// A mount of containerd's as a [`MountSpec`] (borrowed).
pub fn spec_of(m: &Mount) -> MountSpec {
    spec(m.clone())
}

/// The labels every kept snapshot gets on top of the caller's.
fn rooted(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.insert(GC_ROOT.into(), rfc3339(std::time::SystemTime::now()));
    labels
}

pub async fn container_snapshot(ctd: &Containerd, id: &str) -> Result<String, RuntimeError> {
    Ok(container_record(ctd, id).await?.snapshot_key)
}

/// The container's record (its snapshot key and labels).
pub async fn container_record(ctd: &Containerd, id: &str) -> Result<Container, RuntimeError> {
    let mut c = ContainersClient::new(ctd.channel.clone());
    let req = GetContainerRequest { id: id.to_string() };
    let got = ctd.call("read the container", format!("container {id}"), c.get(ctd.request(req, None))).await?;
    got.container.ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })
}

/// The host directory of writable snapshot `key`'s own files (an overlay's upper directory).
pub async fn upper_dir(ctd: &Containerd, key: &str) -> Result<Option<std::path::PathBuf>, RuntimeError> {
    Ok(mounts(ctd, key).await?.upper_dir())
}

/// Makes a just-prepared snapshot's (empty) upper directory a btrfs subvolume where containerd's root is
/// on btrfs, so it can be given a disk limit (see `runtime::quota`).
pub async fn make_quota_dir(ctd: &Containerd, key: &str) -> Result<(), RuntimeError> {
    match upper_dir(ctd, key).await? {
        Some(dir) => crate::runtime::quota::make_subvolume(&dir).await.map(|_| ()),
        None => Ok(()),
    }
}

pub async fn set_container_snapshot(ctd: &Containerd, id: &str, key: &str) -> Result<(), RuntimeError> {
    let mut c = ContainersClient::new(ctd.channel.clone());
    let container = Container { id: id.to_string(), snapshot_key: key.to_string(), ..Default::default() };
    let req = UpdateContainerRequest {
        container: Some(container),
        update_mask: Some(FieldMask { paths: vec!["snapshotkey".into()] }),
    };
    ctd.call("switch the container's snapshot", format!("container {id}"), c.update(ctd.request(req, None))).await?;
    Ok(())
}

pub async fn list(ctd: &Containerd, label: &str, value: &str) -> Result<Vec<SnapshotInfo>, RuntimeError> {
    let req = ListSnapshotsRequest {
        snapshotter: SNAPSHOTTER.into(),
        filters: vec![format!("labels.\"{label}\"==\"{value}\"")],
    };
    let mut stream = ctd.call("list snapshots", "snapshots", client(ctd).list(ctd.request(req, None))).await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + ctd.call_timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err(RuntimeError::Timeout { op: "list snapshots".into(), after: ctd.call_timeout }),
            Ok(Ok(Some(page))) => out.extend(page.info.into_iter().map(info)),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(s)) => return Err(super::classify("list snapshots".into(), "snapshots".into(), s)),
        }
    }
}

pub async fn stat(ctd: &Containerd, key: &str) -> Result<SnapshotInfo, RuntimeError> {
    let req = StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    let r = ctd.call("read a snapshot", format!("snapshot {key}"), client(ctd).stat(ctd.request(req, None))).await?;
    r.info.map(info).ok_or_else(|| RuntimeError::NotFound { what: format!("snapshot {key}") })
}

pub async fn usage(ctd: &Containerd, key: &str) -> Result<u64, RuntimeError> {
    let req = UsageRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    let r =
        ctd.call("measure a snapshot", format!("snapshot {key}"), client(ctd).usage(ctd.request(req, None))).await?;
    Ok(r.size.max(0) as u64)
}

pub async fn prepare(
    ctd: &Containerd,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let req = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.into(),
        parent: parent.into(),
        labels: rooted(labels),
    };
    ctd.call("prepare a snapshot", format!("snapshot {key}"), client(ctd).prepare(ctd.request(req, None))).await?;
    make_quota_dir(ctd, key).await
}

pub async fn remove(ctd: &Containerd, key: &str) -> Result<(), RuntimeError> {
    let req = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    match ctd.call("remove a snapshot", format!("snapshot {key}"), client(ctd).remove(ctd.request(req, None))).await {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
        Err(RuntimeError::Conflict { reason, .. }) => {
            Err(RuntimeError::Conflict { op: format!("remove snapshot {key}"), reason })
        }
        Err(e) => Err(e),
    }
}

pub async fn label(ctd: &Containerd, key: &str, labels: HashMap<String, String>) -> Result<(), RuntimeError> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = Info { name: key.to_string(), labels, ..Default::default() };
    let req = UpdateSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        info: Some(info),
        update_mask: Some(FieldMask { paths }),
    };
    ctd.call("label a snapshot", format!("snapshot {key}"), client(ctd).update(ctd.request(req, None))).await?;
    Ok(())
}

async fn mounts(ctd: &Containerd, key: &str) -> Result<MountSpec, RuntimeError> {
    let req = MountsRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    let r = ctd
        .call("read a snapshot's mounts", format!("snapshot {key}"), client(ctd).mounts(ctd.request(req, None)))
        .await?;
    single(key, r.mounts)
}

fn single(key: &str, mounts: Vec<Mount>) -> Result<MountSpec, RuntimeError> {
    let mut it = mounts.into_iter();
    match (it.next(), it.next()) {
        (Some(m), None) => Ok(spec(m)),
        _ => Err(RuntimeError::Failed {
            op: format!("mount snapshot {key}"),
            source: crate::runtime::Reply::new("Unsupported", "the snapshotter returned other than exactly one mount"),
        }),
    }
}

/// See [`crate::runtime::ContainerRuntime::capture_snapshot`].
pub async fn capture(
    ctd: &Containerd,
    active: &str,
    freeze: Option<&str>,
    key: &str,
    labels: HashMap<String, String>,
) -> Result<SnapshotInfo, RuntimeError> {
    let source = stat(ctd, active).await?;
    let from = mounts(ctd, active).await?.upper_dir().ok_or_else(|| unsupported(active))?;
    staged(ctd, &source.parent, key, labels, |to| async move {
        let frozen = match freeze {
            Some(id) => pause(ctd, id).await?,
            None => false,
        };
        let copied = copy_layer(&from, &to).await;
        if frozen && let Some(id) = freeze {
            resume(ctd, id).await?;
        }
        copied
    })
    .await
}

/// See [`crate::runtime::ContainerRuntime::flatten_snapshot`].
pub async fn flatten(
    ctd: &Containerd,
    key: &str,
    base: &str,
    new_key: &str,
    labels: HashMap<String, String>,
) -> Result<SnapshotInfo, RuntimeError> {
    // How many layers lie between `key` and `base` (`key`'s included).
    let mut depth = 0usize;
    let mut at = key.to_string();
    while at != base {
        if at.is_empty() {
            return Err(RuntimeError::NotFound { what: format!("snapshot {base} below snapshot {key}") });
        }
        depth += 1;
        at = stat(ctd, &at).await?.parent;
    }
    let layers = lower_dirs(ctd, key).await?;
    let layers: Vec<PathBuf> = layers.into_iter().take(depth).collect();
    if layers.len() != depth {
        return Err(unsupported(key));
    }
    staged(ctd, base, new_key, labels, |to| async move {
        let started = std::time::Instant::now();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let merged = crate::runtime::layers::merge(&layers, &to, &stop)?;
            sync_dir(&to)?;
            Ok::<_, std::io::Error>(merged)
        });
        let merged = match tokio::time::timeout(COPY_TIMEOUT, merged).await {
            Ok(joined) => joined,
            Err(_) => {
                // The blocking walk cannot be aborted; it stops at its next entry.
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(RuntimeError::Timeout { op: "flatten a snapshot".into(), after: COPY_TIMEOUT });
            }
        };
        let merged = merged
            .map_err(|e| RuntimeError::Io { op: "flatten a snapshot".into(), source: std::io::Error::other(e) })?
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                    RuntimeError::NoSpace { op: "merge the bot's snapshot layers".into(), detail: source.to_string() }
                }
                _ => RuntimeError::Io { op: format!("merge the {depth} layers of snapshot {key}"), source },
            })?;
        tracing::info!(
            snapshot = key,
            layers = depth,
            entries = merged.entries,
            file_bytes = merged.file_bytes,
            cloned = merged.cloned,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flattened a snapshot"
        );
        Ok(())
    })
    .await
}

/// The directories of committed snapshot `key`'s layers, its own first, as a view of it mounts them.
async fn lower_dirs(ctd: &Containerd, key: &str) -> Result<Vec<PathBuf>, RuntimeError> {
    let spec = view_of(ctd, key).await?;
    match spec.kind.as_str() {
        "bind" => Ok(vec![PathBuf::from(spec.source)]),
        // With `userxattr` overlayfs keeps its marks under other names, which the merge does not read.
        "overlay" if !spec.options.iter().any(|o| o == "userxattr") => Ok(spec
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(|l| l.split(':').map(PathBuf::from).filter(|p| p.is_absolute()).collect())
            .unwrap_or_default()),
        _ => Err(unsupported(key)),
    }
}

/// How a read-only view of committed snapshot `key` is mounted. Such a view mounts only its (immutable)
/// parents' directories, so the view itself is needed just long enough to learn them.
async fn view_of(ctd: &Containerd, key: &str) -> Result<MountSpec, RuntimeError> {
    let lease = ctd.lease("view").await?;
    let view = format!("{key}.view.{}", uuid::Uuid::new_v4().simple());
    let req = ViewSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: view.clone(),
        parent: key.to_string(),
        labels: HashMap::new(),
    };
    let r =
        ctd.call("view a snapshot", format!("snapshot {key}"), client(ctd).view(ctd.request(req, Some(&lease)))).await;
    let _ = remove(ctd, &view).await;
    ctd.drop_lease(&lease).await;
    single(key, r?.mounts)
}

/// Makes committed snapshot `key` on `parent`: a staging snapshot is prepared under a lease (so a crash
/// leaves nothing the collector does not take), `fill` writes its files into the given directory, and
/// the result is committed with `labels` (a garbage-collection root).
async fn staged<F, Fut>(
    ctd: &Containerd,
    parent: &str,
    key: &str,
    labels: HashMap<String, String>,
    fill: F,
) -> Result<SnapshotInfo, RuntimeError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), RuntimeError>>,
{
    let lease = ctd.lease("capture").await?;
    let result = async {
        let staging = format!("{key}.staging");
        let req = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: staging.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let prepared = ctd
            .call(
                "prepare a snapshot",
                format!("snapshot {staging}"),
                client(ctd).prepare(ctd.request(req, Some(&lease))),
            )
            .await?;
        let to = single(&staging, prepared.mounts)?.upper_dir().ok_or_else(|| unsupported(&staging))?;
        fill(to).await?;
        let req = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: key.to_string(),
            key: staging.clone(),
            labels: rooted(labels),
        };
        ctd.call("commit a snapshot", format!("snapshot {key}"), client(ctd).commit(ctd.request(req, Some(&lease))))
            .await?;
        stat(ctd, key).await
    }
    .await;
    ctd.drop_lease(&lease).await;
    result
}

fn unsupported(key: &str) -> RuntimeError {
    RuntimeError::Failed {
        op: format!("locate the files of snapshot {key}"),
        source: crate::runtime::Reply::new("Unsupported", "the snapshot is neither an overlay nor a bind mount"),
    }
}

/// Copies one snapshot layer's files (whiteouts, xattrs, hard links, modes, times included) and flushes
/// them to disk. `cp -a` never follows a symbolic link it copies.
async fn copy_layer(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    let io = |op: String| move |source| RuntimeError::Io { op, source };
    let mut cmd = tokio::process::Command::new("cp");
    cmd.args(["-a", "--reflink=auto", "-T"]).arg(from).arg(to).kill_on_drop(true);
    let out = tokio::time::timeout(COPY_TIMEOUT, cmd.output())
        .await
        .map_err(|_| RuntimeError::Timeout { op: "copy a snapshot".into(), after: COPY_TIMEOUT })?
        .map_err(io("run cp".into()))?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.contains("No space left on device") || detail.contains("Disk quota exceeded") {
            return Err(RuntimeError::NoSpace { op: "copy the bot's files into the snapshot".into(), detail });
        }
        return Err(RuntimeError::Io {
            op: format!("copy {} to {}", from.display(), to.display()),
            source: std::io::Error::other(detail),
        });
    }
    let dir = to.to_path_buf();
    tokio::task::spawn_blocking(move || sync_dir(&dir))
        .await
        .map_err(|e| RuntimeError::Io { op: "flush a snapshot".into(), source: std::io::Error::other(e) })?
        .map_err(io(format!("flush {}", to.display())))
}

/// Flushes the file system holding `dir` to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&f).map_err(std::io::Error::from)
}

/// Freezes a container's task; `false` if it has no running task.
async fn pause(ctd: &Containerd, id: &str) -> Result<bool, RuntimeError> {
    let req = PauseTaskRequest { container_id: id.to_string() };
    let mut t = TasksClient::new(ctd.channel.clone());
    match ctd.call("freeze the task", format!("task {id}"), t.pause(ctd.request(req, None))).await {
        Ok(_) => Ok(true),
        Err(RuntimeError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Thaws a container's task; nothing to do if it has none or it is not frozen.
pub async fn resume(ctd: &Containerd, id: &str) -> Result<(), RuntimeError> {
    let req = ResumeTaskRequest { container_id: id.to_string() };
    let mut t = TasksClient::new(ctd.channel.clone());
    match ctd.call("thaw the task", format!("task {id}"), t.resume(ctd.request(req, None))).await {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
        Err(RuntimeError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// See [`crate::runtime::ContainerRuntime::mount_snapshot`].
pub async fn mount_on(ctd: &Containerd, key: &str, target: &Path, readonly: bool) -> Result<Mounted, RuntimeError> {
    let snap = stat(ctd, key).await?;
    let spec = if snap.committed {
        view_of(ctd, key).await?.readonly()
    } else if readonly {
        mounts(ctd, key).await?.readonly()
    } else {
        mounts(ctd, key).await?
    };
    let target = target.to_path_buf();
    tokio::task::spawn_blocking(move || mount::mount(&spec, &target))
        .await
        .map_err(|e| RuntimeError::Io { op: "mount a snapshot".into(), source: std::io::Error::other(e) })?
        .map_err(|source| RuntimeError::Io { op: format!("mount snapshot {key}"), source })
}
