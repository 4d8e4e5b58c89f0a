//! Installing an image (from an archive or a registry): blobs into the content store (with the GC labels containerd's
//! own importer sets), the image record, and the layers unpacked into committed snapshots named by chain
//! ID, all under a lease so nothing is collected half-way. The image config is labelled with its top
//! snapshot, which keeps the unpacked layers alive once the lease is gone.

use std::collections::HashMap;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, CreateImageRequest, Image as CtdImage, UpdateImageRequest};
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};

use super::{Containerd, SNAPSHOTTER, content};
use crate::runtime::source::{Desc, ImageSource};
use crate::runtime::{Image, RuntimeError};

/// Longest a layer may take to unpack.
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Chain IDs of a layer stack: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n]).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}")))),
        };
        out.push(next);
    }
    out
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, annotations: HashMap::new() }
}

/// Installs `src` (see the module docs).
pub async fn install(ctd: &Containerd, src: &ImageSource) -> Result<Image, RuntimeError> {
    let chains = chain_ids(&src.diff_ids);
    let top = chains.last().cloned().ok_or_else(|| RuntimeError::InvalidImage {
        path: Default::default(),
        reason: format!("image `{}` has no layers", src.name),
    })?;
    let lease = ctd.lease("import").await?;
    let result = async {
        // Blobs, children first; the manifest's labels tie the config and layers to it for the GC.
        for (l, data) in &src.layers {
            put(ctd, &lease, &l.digest, data, HashMap::new()).await?;
        }
        let snap_label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        put(ctd, &lease, &src.config.digest, &src.config_bytes, [(snap_label, top.clone())].into()).await?;
        let mut mlabels: HashMap<String, String> =
            [("containerd.io/gc.ref.content.config".to_string(), src.config.digest.clone())].into();
        for (i, (l, _)) in src.layers.iter().enumerate() {
            mlabels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        put(ctd, &lease, &src.manifest.digest, &src.manifest_bytes, mlabels).await?;
        let layers: Vec<Desc> = src.layers.iter().map(|(d, _)| d.clone()).collect();
        unpack(ctd, &lease, &layers, &chains, &src.diff_ids).await?;
        record(ctd, &lease, &src.name, &src.manifest).await
    }
    .await;
    ctd.drop_lease(&lease).await;
    result?;
    Ok(Image {
        name: src.name.clone(),
        manifest_digest: src.manifest.digest.clone(),
        chain_id: top,
        config: src.run.clone(),
    })
}

/// Writes a blob unless present; when present, makes sure it carries `labels`.
async fn put(
    ctd: &Containerd,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    if content::exists(ctd, digest).await? {
        if !labels.is_empty() {
            content::label(ctd, digest, labels).await?;
        }
        return Ok(());
    }
    match content::write(ctd, lease, digest, data, labels.clone()).await {
        // Written concurrently by someone else: fine, but label it.
        Err(RuntimeError::AlreadyExists { .. }) if !labels.is_empty() => content::label(ctd, digest, labels).await,
        Err(RuntimeError::AlreadyExists { .. }) => Ok(()),
        r => r,
    }
}

/// Applies each layer on top of its parent into a committed snapshot named by its chain ID.
async fn unpack(
    ctd: &Containerd,
    lease: &str,
    layers: &[Desc],
    chains: &[String],
    diff_ids: &[String],
) -> Result<(), RuntimeError> {
    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let mut diff = DiffClient::new(ctd.channel.clone());
    for (i, layer) in layers.iter().enumerate() {
        let chain = &chains[i];
        let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() };
        match ctd.call("stat snapshot", chain, snaps.stat(ctd.request(stat, None))).await {
            Ok(_) => continue,
            Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let key = format!("berth-extract-{}-{chain}", uuid::Uuid::new_v4().simple());
        let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
        let prep = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent,
            labels: HashMap::new(),
        };
        let mounts = ctd.call("prepare snapshot", &key, snaps.prepare(ctd.request(prep, Some(lease)))).await?.mounts;
        let apply = ApplyRequest { diff: Some(descriptor(layer)), mounts, payloads: HashMap::new(), sync_fs: true };
        // Unpacking takes as long as the layer is big (hundreds of MB for a Debian base on a busy disk).
        let applied = ctd
            .call_within(
                "apply layer",
                &layer.digest,
                APPLY_TIMEOUT,
                diff.apply(ctd.request_within(apply, Some(lease), APPLY_TIMEOUT)),
            )
            .await;
        let ok = match applied {
            Ok(r) => r.applied.map(|d| d.digest) == Some(diff_ids[i].clone()),
            Err(e) => {
                remove_quietly(ctd, &key).await;
                return Err(e);
            }
        };
        if !ok {
            remove_quietly(ctd, &key).await;
            return Err(RuntimeError::InvalidImage {
                path: Default::default(),
                reason: format!("layer {} does not unpack to diff_id {}", layer.digest, diff_ids[i]),
            });
        }
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: chain.clone(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        match ctd.call("commit snapshot", chain, snaps.commit(ctd.request(commit, Some(lease)))).await {
            Ok(_) => {}
            // Another import committed the same layer first.
            Err(RuntimeError::AlreadyExists { .. }) => remove_quietly(ctd, &key).await,
            Err(e) => {
                remove_quietly(ctd, &key).await;
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn remove_quietly(ctd: &Containerd, key: &str) {
    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let req = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    if let Err(e) = ctd.call("remove snapshot", key, snaps.remove(ctd.request(req, None))).await {
        tracing::warn!(snapshot = key, error = %e, "failed to remove a temporary snapshot");
    }
}

/// Creates (or points at the new manifest) the image record.
async fn record(ctd: &Containerd, lease: &str, name: &str, mdesc: &Desc) -> Result<(), RuntimeError> {
    let mut images = ImagesClient::new(ctd.channel.clone());
    let image = CtdImage { name: name.to_string(), target: Some(descriptor(mdesc)), ..Default::default() };
    let create = CreateImageRequest { image: Some(image.clone()), source_date_epoch: None };
    match ctd.call("create image", name, images.create(ctd.request(create, Some(lease)))).await {
        Ok(_) => Ok(()),
        Err(RuntimeError::AlreadyExists { .. }) => {
            let update = UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None };
            ctd.call("update image", name, images.update(ctd.request(update, Some(lease)))).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let diffs = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = super::chain_ids(&diffs);
        assert_eq!(c[0], "sha256:a");
        // printf 'sha256:a sha256:b' | sha256sum
        assert_eq!(c[1], "sha256:970a948bffa8de94d6e22d747ba8c95030e6e546909f98f54e99a13005e173a8");
    }
}
