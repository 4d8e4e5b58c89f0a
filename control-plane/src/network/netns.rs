//! Named network namespaces: a file under the netns directory bind-mounted onto a fresh namespace, so the
//! namespace (and the bot's IP) outlives task restarts. Created on a throwaway thread, never a tokio
//! worker, because `unshare` changes the calling thread.

use std::path::{Path, PathBuf};

use rustix::mount::{UnmountFlags, mount_bind, unmount};
#[allow(deprecated)] // safe for NEWNET; the `_unsafe` variant exists for CLONE_FILES-style flags
use rustix::thread::{UnshareFlags, unshare};

/// Creates `<dir>/<name>` holding a new network namespace; an existing one is kept.
pub fn create(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    if is_mounted(&path) {
        return Ok(path);
    }
    std::fs::File::create(&path)?;
    let target = path.clone();
    let r = std::thread::spawn(move || -> std::io::Result<()> {
        #[allow(deprecated)]
        unshare(UnshareFlags::NEWNET)?;
        mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?;
    if let Err(e) = r {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Re-creates the named namespace `path` from the network namespace process `pid` is in (its mount was
/// removed while the bot's task kept the namespace alive).
pub fn bind_from(pid: u32, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if !path.exists() {
        std::fs::File::create(path)?;
    }
    mount_bind(format!("/proc/{pid}/ns/net").as_str(), path)?;
    Ok(())
}

/// Unmounts and removes a named namespace; a missing one is fine.
pub fn delete(path: &Path) -> std::io::Result<()> {
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) => {}
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a mount point (a live named namespace).
pub fn is_mounted(path: &Path) -> bool {
    // The file system at the path is nsfs only while a namespace is bound there (an unmounted path is
    // the empty file on the run directory's file system). One statfs, where reading the mount table
    // cost every check time in proportion to the bots on the host.
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

/// `statfs` magic of nsfs, the namespace file system.
const NSFS_MAGIC: i64 = 0x6e73_6673;
