//! Where an image comes from, before it is installed: an OCI image-layout archive or a registry pull
//! both produce an [`ImageSource`] (every blob verified against its digest), which the runtime installs.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ImageConfig, RuntimeError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Desc,
    pub layers: Vec<Desc>,
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

/// An image ready to install: every blob present and verified.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub name: String,
    pub manifest: Desc,
    pub manifest_bytes: Vec<u8>,
    pub config: Desc,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<(Desc, Vec<u8>)>,
    pub diff_ids: Vec<String>,
    pub run: ImageConfig,
}

/// Whether a descriptor is for linux/amd64 (or says nothing).
pub fn is_amd64(d: &Desc) -> bool {
    d.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
}

/// Checks `data` against `digest` (sha256 only).
pub fn verify(digest: &str, data: &[u8]) -> Result<(), String> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    if actual == digest { Ok(()) } else { Err(format!("blob {digest} has digest {actual}")) }
}

impl ImageSource {
    /// Builds the source from a manifest and a way to fetch (verified) blobs.
    pub fn assemble(
        name: String,
        manifest: Desc,
        manifest_bytes: Vec<u8>,
        mut blob: impl FnMut(&Desc) -> Result<Vec<u8>, String>,
    ) -> Result<ImageSource, String> {
        let m: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
        let config_bytes = blob(&m.config)?;
        let cfg: ConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| format!("the image config is not valid: {e}"))?;
        if cfg.rootfs.diff_ids.len() != m.layers.len() || m.layers.is_empty() {
            return Err("the config's diff_ids do not match the manifest's layers".into());
        }
        let mut layers = Vec::new();
        for l in &m.layers {
            layers.push((l.clone(), blob(l)?));
        }
        let run = cfg.config.unwrap_or_default();
        Ok(ImageSource {
            name,
            manifest,
            manifest_bytes,
            config: m.config,
            config_bytes,
            layers,
            diff_ids: cfg.rootfs.diff_ids,
            run: ImageConfig {
                entrypoint: run.entrypoint.unwrap_or_default(),
                cmd: run.cmd.unwrap_or_default(),
                env: run.env.unwrap_or_default(),
                working_dir: run.working_dir.unwrap_or_default(),
            },
        })
    }

    /// Reads an OCI image-layout archive (`index.json`, `blobs/sha256/…`).
    pub fn from_archive(path: &Path) -> Result<ImageSource, RuntimeError> {
        let invalid = |reason: String| RuntimeError::InvalidImage { path: path.to_path_buf(), reason };
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
        let get = |d: &Desc| -> Result<Vec<u8>, String> {
            let hex = d.digest.strip_prefix("sha256:").ok_or_else(|| format!("unsupported digest {}", d.digest))?;
            let data =
                files.get(&format!("blobs/sha256/{hex}")).ok_or_else(|| format!("blob {} is missing", d.digest))?;
            verify(&d.digest, data)?;
            Ok(data.clone())
        };
        let index: Index =
            serde_json::from_slice(files.get("index.json").ok_or_else(|| invalid("index.json is missing".into()))?)
                .map_err(|e| invalid(format!("index.json is not valid: {e}")))?;
        let mdesc = index
            .manifests
            .iter()
            .find(|m| (m.media_type == OCI_MANIFEST || m.media_type == DOCKER_MANIFEST) && is_amd64(m))
            .ok_or_else(|| invalid("no linux/amd64 image manifest in index.json".into()))?
            .clone();
        let name = mdesc
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| mdesc.annotations.get("org.opencontainers.image.ref.name"))
            .cloned()
            .ok_or_else(|| invalid("the manifest has no image name annotation".into()))?;
        let mbytes = get(&mdesc).map_err(invalid)?;
        ImageSource::assemble(name, mdesc, mbytes, get).map_err(invalid)
    }
}
