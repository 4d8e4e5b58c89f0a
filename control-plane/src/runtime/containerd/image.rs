//! Importing an OCI image-layout archive: blobs into the content store (with the GC labels containerd's
//! own importer sets), the image record, and the layers unpacked into committed snapshots named by chain
//! ID, all under a lease so nothing is collected half-way. The image config is labelled with its top
//! snapshot, which keeps the unpacked layers alive once the lease is gone.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, CreateImageRequest, Image as CtdImage, UpdateImageRequest};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Containerd, SNAPSHOTTER, content};
use crate::runtime::{Image, ImageConfig, RuntimeError};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The archive's files by path (`index.json`, `blobs/sha256/<hex>`).
struct Archive {
    files: HashMap<String, Vec<u8>>,
}

impl Archive {
    fn read(path: &Path) -> Result<Archive, RuntimeError> {
        let io = |source| RuntimeError::Io { op: format!("read image archive `{}`", path.display()), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut tar = tar::Archive::new(file);
        let mut files = HashMap::new();
        for entry in tar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().trim_start_matches("./").to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(io)?;
            files.insert(name, data);
        }
        Ok(Archive { files })
    }

    fn blob(&self, digest: &str, path: &Path) -> Result<&[u8], RuntimeError> {
        let hex =
            digest.strip_prefix("sha256:").ok_or_else(|| invalid(path, format!("unsupported digest {digest}")))?;
        let data = self
            .files
            .get(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| invalid(path, format!("blob {digest} is missing")))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        if actual != digest {
            return Err(invalid(path, format!("blob {digest} has digest {actual}")));
        }
        Ok(data)
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, data: &[u8], what: &str, path: &Path) -> Result<T, RuntimeError> {
        serde_json::from_slice(data).map_err(|e| invalid(path, format!("{what} is not valid: {e}")))
    }
}

fn invalid(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::InvalidImage { path: path.to_path_buf(), reason }
}

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

/// Imports the archive at `path` (see the module docs).
pub async fn import(ctd: &Containerd, path: &Path) -> Result<Image, RuntimeError> {
    let owned = path.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || Archive::read(&owned))
        .await
        .map_err(|e| RuntimeError::Io { op: "read image archive".into(), source: std::io::Error::other(e) })??;
    let index_bytes = archive.files.get("index.json").ok_or_else(|| invalid(path, "index.json is missing".into()))?;
    let index: Index = archive.json(index_bytes, "index.json", path)?;
    let mdesc = index
        .manifests
        .iter()
        .find(|m| {
            (m.media_type == MANIFEST || m.media_type == DOCKER_MANIFEST)
                && m.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| invalid(path, "no linux/amd64 image manifest in index.json".into()))?;
    let name = mdesc
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| mdesc.annotations.get("org.opencontainers.image.ref.name"))
        .cloned()
        .ok_or_else(|| invalid(path, "the manifest has no image name annotation".into()))?;
    let manifest_bytes = archive.blob(&mdesc.digest, path)?;
    let manifest: Manifest = archive.json(manifest_bytes, "the manifest", path)?;
    let config_bytes = archive.blob(&manifest.config.digest, path)?;
    let config: ConfigFile = archive.json(config_bytes, "the image config", path)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(path, "the config's diff_ids do not match the manifest's layers".into()));
    }
    let chains = chain_ids(&config.rootfs.diff_ids);
    let top = chains.last().cloned().ok_or_else(|| invalid(path, "the image has no layers".into()))?;

    let lease = ctd.lease("import").await?;
    let result = async {
        // Blobs, children first; the manifest's labels tie the config and layers to it for the GC.
        for l in &manifest.layers {
            put(ctd, &lease, &l.digest, archive.blob(&l.digest, path)?, HashMap::new()).await?;
        }
        let snap_label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        put(ctd, &lease, &manifest.config.digest, config_bytes, [(snap_label, top.clone())].into()).await?;
        let mut mlabels: HashMap<String, String> =
            [("containerd.io/gc.ref.content.config".to_string(), manifest.config.digest.clone())].into();
        for (i, l) in manifest.layers.iter().enumerate() {
            mlabels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        put(ctd, &lease, &mdesc.digest, manifest_bytes, mlabels).await?;
        unpack(ctd, &lease, &manifest, &chains, &config.rootfs.diff_ids).await?;
        record(ctd, &lease, &name, mdesc).await
    }
    .await;
    ctd.drop_lease(&lease).await;
    result?;
    let run = config.config.unwrap_or_default();
    Ok(Image {
        name,
        manifest_digest: mdesc.digest.clone(),
        chain_id: top,
        config: ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
        },
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
    manifest: &Manifest,
    chains: &[String],
    diff_ids: &[String],
) -> Result<(), RuntimeError> {
    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let mut diff = DiffClient::new(ctd.channel.clone());
    for (i, layer) in manifest.layers.iter().enumerate() {
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
        let applied = ctd.call("apply layer", &layer.digest, diff.apply(ctd.request(apply, Some(lease)))).await;
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
