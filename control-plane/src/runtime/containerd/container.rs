//! Creating and deleting a bot's container: its writable snapshot on top of the image, the container
//! record with the runtime spec, and cleanup in containerd's order (task, container, snapshot).

use std::collections::HashMap;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{Container, CreateContainerRequest, DeleteContainerRequest};
use prost_types::Any;

use super::{Containerd, RUNTIME, SNAPSHOTTER, task};
use crate::runtime::{ContainerConfig, KIND_ACTIVE, LABEL_BOT, LABEL_KIND, RuntimeError, spec};

/// Creates the snapshot and the container record. On failure nothing is left behind.
pub async fn create(ctd: &Containerd, c: &ContainerConfig) -> Result<(), RuntimeError> {
    // A container of this id before (a deleted bot of the same name) said nothing this one did.
    remove_log(ctd, &c.id);
    // A lease holds the new snapshot until the container record references it.
    let lease = ctd.lease("create").await?;
    let result = create_under(ctd, c, &lease).await;
    ctd.drop_lease(&lease).await;
    result
}

async fn create_under(ctd: &Containerd, c: &ContainerConfig, lease: &str) -> Result<(), RuntimeError> {
    let key = c.snapshot.clone().unwrap_or_else(|| c.id.clone());
    if c.snapshot.is_none() {
        let mut snaps = SnapshotsClient::new(ctd.channel.clone());
        let prep = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: c.image.chain_id.clone(),
            labels: snapshot_labels(c),
        };
        ctd.call(
            "prepare the container snapshot",
            format!("snapshot {key}"),
            snaps.prepare(ctd.request(prep, Some(lease))),
        )
        .await?;
        super::snapshot::make_quota_dir(ctd, &key).await?;
    }
    let spec = spec::build(c, ctd.namespace());
    let mut labels = c.labels.clone();
    if let Some(bytes) = c.limits.disk_bytes {
        labels.insert(crate::runtime::LABEL_DISK.to_string(), bytes.to_string());
    }
    let container = Container {
        id: c.id.clone(),
        labels,
        image: c.image.name.clone(),
        runtime: Some(Runtime { name: RUNTIME.into(), options: None }),
        spec: Some(Any { type_url: spec::SPEC_TYPE_URL.into(), value: spec.to_string().into_bytes() }),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: key.clone(),
        ..Default::default()
    };
    let mut containers = ContainersClient::new(ctd.channel.clone());
    let req = CreateContainerRequest { container: Some(container) };
    if let Err(e) = ctd
        .call("create the container", format!("container {}", c.id), containers.create(ctd.request(req, Some(lease))))
        .await
    {
        // A snapshot we were given is data we must keep; only one made here is removed.
        if c.snapshot.is_none() {
            remove_snapshot(ctd, &key).await?;
        }
        return Err(e);
    }
    Ok(())
}

/// The labels of a container's writable snapshot: whose it is, what it is, and a GC root, so the bot's
/// data outlives even a container record deleted behind our back.
fn snapshot_labels(c: &ContainerConfig) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    if let Some(bot) = c.labels.get(LABEL_BOT) {
        labels.insert(LABEL_BOT.to_string(), bot.clone());
    }
    labels.insert(LABEL_KIND.to_string(), KIND_ACTIVE.to_string());
    labels.insert("containerd.io/gc.root".to_string(), super::rfc3339(std::time::SystemTime::now()));
    labels
}

/// Removes the task (killing it), the container and the snapshot it runs on; missing pieces are skipped.
pub async fn delete(ctd: &Containerd, id: &str) -> Result<(), RuntimeError> {
    let key = match super::snapshot::container_snapshot(ctd, id).await {
        Ok(key) => key,
        Err(RuntimeError::NotFound { .. }) => {
            remove_log(ctd, id);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    task::remove(ctd, id).await?;
    let mut containers = ContainersClient::new(ctd.channel.clone());
    let req = DeleteContainerRequest { id: id.to_string() };
    match ctd.call("delete the container", format!("container {id}"), containers.delete(ctd.request(req, None))).await {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    remove_snapshot(ctd, &key).await?;
    remove_log(ctd, id);
    Ok(())
}

/// Removes the task log of container `id` (what is gone is fine; anything else is logged, not fatal).
fn remove_log(ctd: &Containerd, id: &str) {
    let log = ctd.log_path(id);
    match std::fs::remove_file(&log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(container.id = id, log = %log.display(), error = %e, "cannot remove a task log"),
    }
}

async fn remove_snapshot(ctd: &Containerd, key: &str) -> Result<(), RuntimeError> {
    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let req = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    match ctd
        .call("remove the container snapshot", format!("snapshot {key}"), snaps.remove(ctd.request(req, None)))
        .await
    {
        Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
