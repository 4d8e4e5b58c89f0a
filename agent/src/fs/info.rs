//! Describing files: `stat`/`lstat` inside the root, and the [`FileInfo`] the API reports.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType as RxType, Mode, OFlags, Stat};

use super::root::{RelPath, Root, name_os};
use crate::error::{Error, Result};

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

/// What the API reports about one file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub kind: Kind,
    pub size_bytes: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub symlink_target: String,
    pub nlink: u64,
    pub inode: u64,
}

impl FileInfo {
    /// Builds the description from a raw `stat`, naming it `path`.
    pub fn from_stat(path: String, st: &Stat, symlink_target: String) -> FileInfo {
        let kind = match RxType::from_raw_mode(st.st_mode) {
            RxType::RegularFile => Kind::File,
            RxType::Directory => Kind::Directory,
            RxType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        FileInfo {
            path,
            kind,
            size_bytes: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_ns: st.st_mtime.saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as i64),
            symlink_target,
            nlink: st.st_nlink,
            inode: st.st_ino,
        }
    }
}

/// `lstat` (or `stat` with `follow`) of a client path.
pub fn stat(root: &Root, rel: &RelPath, follow: bool) -> Result<FileInfo> {
    let shown = rel.display();
    if follow || rel.is_root() {
        let fd = root.open(rel, OFlags::PATH, Mode::empty()).map_err(|e| Error::io("stat", &shown, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", &shown, e.into()))?;
        return Ok(FileInfo::from_stat(shown, &st, String::new()));
    }
    let (dir, name) = root.parent(rel)?;
    lstat_at(dir.as_fd(), name, shown)
}

/// `lstat` of `name` in `dir`, reading the link target for symlinks.
pub fn lstat_at(dir: std::os::fd::BorrowedFd<'_>, name: &str, shown: String) -> Result<FileInfo> {
    let st = rustix::fs::statat(dir, name_os(name), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("stat", &shown, e.into()))?;
    let target = if RxType::from_raw_mode(st.st_mode) == RxType::Symlink {
        rustix::fs::readlinkat(dir, name_os(name), Vec::new())
            .map(|t| t.to_string_lossy().into_owned())
            .map_err(|e| Error::io("read link", &shown, e.into()))?
    } else {
        String::new()
    };
    Ok(FileInfo::from_stat(shown, &st, target))
}
