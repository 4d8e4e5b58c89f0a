//! Per-bot disk quotas. containerd's overlayfs snapshotter has none, so where containerd's root is on
//! btrfs, each writable snapshot's directory (an overlay's upper and work directories, which overlayfs
//! needs on one subvolume) is made a btrfs subvolume the moment it is prepared (still empty), and its
//! qgroup gets the bot's limit when its task starts: a write past it fails with EDQUOT in that bot only. Elsewhere the layers are plain directories and bots have no
//! disk quota (berthd says so in the bot's `disk_quota`; see docs/SECURITY.md).
//!
//! btrfs is driven through `btrfs` from btrfs-progs (subvolume create, quota enable, qgroup limit/show),
//! with a deadline on every call. The directories are under containerd's root, which no bot can write.

use std::path::Path;
use std::time::Duration;

use super::RuntimeError;

/// `statfs` magic of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// How long one `btrfs` command may take.
const BTRFS_DEADLINE: Duration = Duration::from_secs(20);

/// Whether `dir` is on btrfs (so quotas can be had there).
pub fn supported(dir: &Path) -> bool {
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Makes the directory of a just-prepared overlay snapshot (the parent of its empty upper directory
/// `upper` and of its work directory, which overlayfs needs on the same subvolume) a btrfs subvolume, so
/// it can get a limit. Only where quotas are already on for that file system (berthd never turns them on
/// for a whole file system it does not own; `scripts/run.sh` turns them on for its own image). A snapshot
/// that is already one, holds files, is not on btrfs, or whose subvolume cannot be made is left a plain
/// directory (no quota, logged): a quota problem never fails a create. Returns the subvolume, if any.
pub async fn make_subvolume(upper: &Path) -> Result<Option<std::path::PathBuf>, RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    let Some(snapshot) = upper.parent() else { return Ok(None) };
    if !supported(snapshot) {
        return Ok(None);
    }
    if is_subvolume(snapshot) {
        return Ok(Some(snapshot.to_path_buf()));
    }
    if let Err(e) = run(&["qgroup", "show"], snapshot).await {
        tracing::debug!(dir = %snapshot.display(), error = %crate::error::chain(&e), "no btrfs quotas here: no disk quota");
        return Ok(None);
    }
    let io = |op: &str, source| RuntimeError::Io { op: format!("{op} {}", snapshot.display()), source };
    // Only the (empty) directories containerd just made, kept with their modes and owners.
    let mut children = Vec::new();
    for entry in std::fs::read_dir(snapshot).map_err(|e| io("read", e))? {
        let entry = entry.map_err(|e| io("read", e))?;
        let meta = entry.metadata().map_err(|e| io("read", e))?;
        let empty = std::fs::read_dir(entry.path()).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !meta.is_dir() || !empty {
            return Ok(None);
        }
        children.push(Child { name: entry.file_name(), mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() });
    }
    for c in &children {
        std::fs::remove_dir(snapshot.join(&c.name)).map_err(|e| io("empty", e))?;
    }
    std::fs::remove_dir(snapshot).map_err(|e| io("replace with a subvolume", e))?;
    let made = btrfs(&["subvolume", "create"], snapshot).await;
    if let Err(e) = &made {
        tracing::warn!(dir = %snapshot.display(), error = %crate::error::chain(e), "cannot make a subvolume: no disk quota for this layer");
        std::fs::create_dir(snapshot).map_err(|e| io("restore", e))?;
    }
    for c in &children {
        let path = snapshot.join(&c.name);
        std::fs::create_dir(&path).map_err(|e| io("refill", e))?;
        std::os::unix::fs::chown(&path, Some(c.uid), Some(c.gid)).map_err(|e| io("refill", e))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(c.mode))
            .map_err(|e| io("refill", e))?;
    }
    Ok(made.ok().map(|()| snapshot.to_path_buf()))
}

/// A directory of a snapshot's, as containerd made it.
struct Child {
    name: std::ffi::OsString,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The subvolume holding upper directory `upper` (its snapshot's directory), if it is one.
pub fn subvolume_of(upper: &Path) -> Option<&Path> {
    upper.parent().filter(|p| is_subvolume(p))
}

/// Sets (`Some`) or lifts (`None`) the limit of subvolume `dir`, counting every byte it references.
pub async fn set_limit(dir: &Path, bytes: Option<u64>) -> Result<(), RuntimeError> {
    if !is_subvolume(dir) {
        return Err(RuntimeError::Conflict {
            op: format!("limit the disk use of {}", dir.display()),
            reason: "it is not a btrfs subvolume (containerd's root is not on btrfs, or the layer predates it)".into(),
        });
    }
    let size = bytes.map_or_else(|| "none".to_string(), |b| b.to_string());
    btrfs(&["qgroup", "limit", &size], dir).await
}

/// Bytes subvolume `dir` uses, as its qgroup counts them (`None` when it is no subvolume).
pub async fn usage(dir: &Path) -> Option<u64> {
    if !is_subvolume(dir) {
        return None;
    }
    let out = run(&["qgroup", "show", "-rfe", "--raw"], dir).await.ok()?;
    // "qgroupid rfer excl max_rfer max_excl [path]": the row of this subvolume's own qgroup (0/ID).
    out.lines().filter(|l| l.starts_with("0/")).find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// A subvolume's root directory has inode number 256 on btrfs.
fn is_subvolume(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    supported(dir) && std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

async fn btrfs(args: &[&str], dir: &Path) -> Result<(), RuntimeError> {
    run(args, dir).await.map(|_| ())
}

async fn run(args: &[&str], dir: &Path) -> Result<String, RuntimeError> {
    let op = format!("btrfs {} {}", args.join(" "), dir.display());
    let mut cmd = tokio::process::Command::new("btrfs");
    cmd.args(args).arg(dir).kill_on_drop(true);
    let out = match tokio::time::timeout(BTRFS_DEADLINE, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(RuntimeError::Io { op, source }),
        Err(_) => return Err(RuntimeError::Timeout { op, after: BTRFS_DEADLINE }),
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(RuntimeError::Io { op, source: std::io::Error::other(format!("{}: {said}", out.status)) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
