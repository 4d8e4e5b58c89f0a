//! A container's task (its running process tree): create with the snapshot's mounts and the log file as
//! stdio, start, graceful stop (SIGTERM, then SIGKILL to every process after a deadline), state.

use std::time::Duration;

use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::{Process, Status};

use super::{Containerd, SNAPSHOTTER};
use crate::runtime::{RuntimeError, Started, TaskState};

/// How long to wait for a task to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The log file every task writes its stdout and stderr to.
pub fn log_uri(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

/// Creates and starts the task; returns its pid. A task left by an interrupted earlier start (created but
/// never started, or dead) is removed first; one that is already running is adopted.
pub async fn start(ctd: &Containerd, id: &str) -> Result<Started, RuntimeError> {
    match status(ctd, id).await? {
        None => {}
        Some((Status::Running, pid)) => return Ok(Started { pid, created: false }),
        Some((s, _)) => {
            tracing::warn!(container.id = id, status = ?s, "removing a task left by an interrupted start");
            remove(ctd, id).await?;
        }
    }
    let record = super::snapshot::container_record(ctd, id).await?;
    let key = record.snapshot_key;
    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let mounts = MountsRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() };
    let rootfs = ctd
        .call("read the container's mounts", format!("snapshot {key}"), snaps.mounts(ctd.request(mounts, None)))
        .await?
        .mounts;
    let log = ctd.log_path(id);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| RuntimeError::Io { op: format!("create {}", dir.display()), source })?;
    }
    // The user cgroup exists before the task, so berthd can hand its files to the agent at once.
    crate::runtime::cgroup::prepare(ctd.namespace(), id)?;
    apply_disk_limit(id, &rootfs, record.labels.get(crate::runtime::LABEL_DISK)).await;
    let mut tasks = TasksClient::new(ctd.channel.clone());
    let create = CreateTaskRequest {
        container_id: id.to_string(),
        rootfs,
        stdout: log_uri(&log),
        stderr: log_uri(&log),
        ..Default::default()
    };
    let what = format!("task {id}");
    ctd.call("create the task", &what, tasks.create(ctd.request(create, None))).await?;
    let start = StartRequest { container_id: id.to_string(), exec_id: String::new() };
    match ctd.call("start the task", &what, tasks.start(ctd.request(start, None))).await {
        Ok(r) => {
            if let Err(e) = crate::runtime::cgroup::apply(ctd.namespace(), id, r.pid) {
                // The bot runs, only without the agent's reserve: worth an error in the log, not a failed start.
                tracing::error!(container.id = id, error = %crate::error::chain(&e), "cannot limit the user cgroup");
            }
            Ok(Started { pid: r.pid, created: true })
        }
        Err(e) => {
            remove(ctd, id).await?;
            Err(e)
        }
    }
}

/// The task's process as containerd reports it; `None` if there is no task.
async fn process(ctd: &Containerd, id: &str) -> Result<Option<Process>, RuntimeError> {
    let mut tasks = TasksClient::new(ctd.channel.clone());
    let req = GetRequest { container_id: id.to_string(), exec_id: String::new() };
    match ctd.call("get the task", format!("task {id}"), tasks.get(ctd.request(req, None))).await {
        Ok(r) => Ok(Some(r.process.unwrap_or_default())),
        Err(RuntimeError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The task's raw status and pid; `None` if there is no task.
async fn status(ctd: &Containerd, id: &str) -> Result<Option<(Status, u32)>, RuntimeError> {
    Ok(process(ctd, id).await?.map(|p| (Status::try_from(p.status).unwrap_or(Status::Unknown), p.pid)))
}

pub async fn state(ctd: &Containerd, id: &str) -> Result<TaskState, RuntimeError> {
    Ok(observe(ctd, id).await?.0)
}

/// The task's state, and whether containerd calls it running proper (not created, paused or unknown,
/// which [`TaskState`] also reports as running).
pub async fn observe(ctd: &Containerd, id: &str) -> Result<(TaskState, bool), RuntimeError> {
    Ok(match process(ctd, id).await? {
        None => (TaskState::NoTask, false),
        Some(p) => match Status::try_from(p.status) {
            Ok(Status::Stopped) => (TaskState::Stopped { exit_status: p.exit_status }, false),
            Ok(Status::Running) => (TaskState::Running { pid: p.pid }, true),
            _ => (TaskState::Running { pid: p.pid }, false),
        },
    })
}

async fn kill(ctd: &Containerd, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
    let mut tasks = TasksClient::new(ctd.channel.clone());
    let req = KillRequest { container_id: id.to_string(), exec_id: String::new(), signal, all };
    match ctd.call("signal the task", format!("task {id}"), tasks.kill(ctd.request(req, None))).await {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits up to `limit` for the task to exit; `None` on timeout.
async fn wait(ctd: &Containerd, id: &str, limit: Duration) -> Result<Option<u32>, RuntimeError> {
    let mut tasks = TasksClient::new(ctd.channel.clone());
    let mut req = ctd.request(WaitRequest { container_id: id.to_string(), exec_id: String::new() }, None);
    req.set_timeout(limit + Duration::from_secs(1));
    match tokio::time::timeout(limit, tasks.wait(req)).await {
        Err(_) => Ok(None),
        Ok(Ok(r)) => Ok(Some(r.into_inner().exit_status)),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(Some(0)),
        Ok(Err(s)) => Err(super::classify(format!("wait for task {id}"), format!("task {id}"), s)),
    }
}

/// SIGTERM, `grace`, then SIGKILL to all processes; then deletes the task. Returns the exit status.
pub async fn stop(ctd: &Containerd, id: &str, grace: Duration) -> Result<Option<u32>, RuntimeError> {
    if let TaskState::NoTask = state(ctd, id).await? {
        return Ok(None);
    }
    kill(ctd, id, libc::SIGTERM as u32, false).await?;
    let mut status = wait(ctd, id, grace).await?;
    if status.is_none() {
        tracing::info!(container.id = id, grace_ms = grace.as_millis() as u64, "task ignored SIGTERM; killing");
        kill(ctd, id, libc::SIGKILL as u32, true).await?;
        status = wait(ctd, id, KILL_WAIT).await?;
        if status.is_none() {
            return Err(RuntimeError::Timeout { op: format!("stop task {id}"), after: grace + KILL_WAIT });
        }
    }
    delete_task(ctd, id).await?;
    Ok(status)
}

/// Kills and removes the task if there is one.
pub async fn remove(ctd: &Containerd, id: &str) -> Result<(), RuntimeError> {
    match state(ctd, id).await? {
        TaskState::NoTask => Ok(()),
        TaskState::Stopped { .. } => delete_task(ctd, id).await,
        TaskState::Running { .. } => {
            kill(ctd, id, libc::SIGKILL as u32, true).await?;
            if wait(ctd, id, KILL_WAIT).await?.is_none() {
                return Err(RuntimeError::Timeout { op: format!("kill task {id}"), after: KILL_WAIT });
            }
            delete_task(ctd, id).await
        }
    }
}

async fn delete_task(ctd: &Containerd, id: &str) -> Result<(), RuntimeError> {
    let mut tasks = TasksClient::new(ctd.channel.clone());
    let req = DeleteTaskRequest { container_id: id.to_string() };
    match ctd.call("delete the task", format!("task {id}"), tasks.delete(ctd.request(req, None))).await {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => {
            // runc removes the cgroups it made; the user cgroup's are berthd's to remove.
            crate::runtime::cgroup::remove(ctd.namespace(), id);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Applies the container's disk limit (label [`LABEL_DISK`](crate::runtime::LABEL_DISK), absent =
/// unlimited) to its writable layer before the task runs. Where containerd's root has no quotas the bot
/// runs without one, and `disk_usage` says so; that is logged, not a failed start.
async fn apply_disk_limit(id: &str, rootfs: &[containerd_client::types::Mount], label: Option<&String>) {
    let Some(upper) = rootfs.first().and_then(|m| super::snapshot::spec_of(m).upper_dir()) else { return };
    let limit = label.and_then(|v| v.parse::<u64>().ok());
    let Some(subvolume) = crate::runtime::quota::subvolume_of(&upper) else {
        if limit.is_some() {
            tracing::warn!(container.id = id, "the bot's layer is no btrfs subvolume: its disk limit is not enforced");
        }
        return;
    };
    if let Err(e) = crate::runtime::quota::set_limit(subvolume, limit).await {
        tracing::warn!(container.id = id, error = %crate::error::chain(&e), "cannot apply the bot's disk limit");
    }
}
