//! Small mutations on client paths: mkdir, rename, delete, chmod, chown. Each acts on the final component
//! through its parent directory's fd, so a final symlink is operated on, never followed out of the root.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags};

use super::root::{RelPath, Root, name_os};
use crate::error::{Error, Result};

/// Default mode for new directories.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

fn check_mode(mode: u32) -> Result<()> {
    if mode > 0o7777 {
        return Err(Error::InvalidArgument(format!("mode {mode:o} has bits outside 07777")));
    }
    Ok(())
}

/// Creates `rel` and any missing ancestors; succeeds if it already is a directory. Returns whether the
/// final directory was created.
pub fn mkdir_all(root: &Root, rel: &RelPath, mode: u32) -> Result<bool> {
    let mut created = false;
    for prefix in rel.prefixes() {
        created = match root.open(&prefix, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => mkdir_one(root, &prefix, mode, true)?,
            Err(e) => return Err(Error::io("mkdir", &prefix.display(), e)),
        };
    }
    Ok(created)
}

fn mkdir_one(root: &Root, rel: &RelPath, mode: u32, exist_ok: bool) -> Result<bool> {
    let (dir, name) = root.parent(rel)?;
    match rustix::fs::mkdirat(&dir, name_os(name), Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) if exist_ok => {
            // Something is there: fine if it is (or, inside the root, links to) a directory.
            match root.open(rel, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) {
                Ok(_) => Ok(false),
                Err(_) => Err(Error::AlreadyExists(format!("`{}` exists and is not a directory", rel.display()))),
            }
        }
        Err(e) => Err(Error::io("mkdir", &rel.display(), e.into())),
    }
}

/// `mkdir`, or `mkdir -p` with `parents`.
pub fn mkdir(root: &Root, rel: &RelPath, parents: bool, mode: u32) -> Result<bool> {
    let mode = if mode == 0 { DEFAULT_DIR_MODE } else { mode };
    check_mode(mode)?;
    if rel.is_root() {
        return if parents { Ok(false) } else { Err(Error::AlreadyExists("`/` already exists".into())) };
    }
    if parents { mkdir_all(root, rel, mode) } else { mkdir_one(root, rel, mode, false) }
}

/// Renames `from` to `to` (both inside the root).
pub fn rename(root: &Root, from: &RelPath, to: &RelPath, no_overwrite: bool, create_parents: bool) -> Result<()> {
    if create_parents && let Some((parent, _)) = to.split_last() {
        mkdir_all(root, &parent, DEFAULT_DIR_MODE)?;
    }
    let (from_dir, from_name) = root.parent(from)?;
    let (to_dir, to_name) = root.parent(to)?;
    let flags = if no_overwrite { RenameFlags::NOREPLACE } else { RenameFlags::empty() };
    rustix::fs::renameat_with(&from_dir, name_os(from_name), &to_dir, name_os(to_name), flags).map_err(|e| {
        let shown = format!("{}` to `{}", from.display(), to.display());
        Error::io("rename", &shown, e.into())
    })
}

/// Removes `rel`; with `recursive`, directories and their contents. Returns whether anything existed.
pub fn delete(root: &Root, rel: &RelPath, recursive: bool) -> Result<bool> {
    let shown = rel.display();
    let (dir, name) = root.parent(rel)?;
    let st = match rustix::fs::statat(&dir, name_os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(Error::io("stat", &shown, e.into())),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        unlink(dir.as_fd(), name, false, &shown)?;
        return Ok(true);
    }
    if recursive {
        remove_tree(dir.as_fd(), name, &shown)?;
        return Ok(true);
    }
    match rustix::fs::unlinkat(&dir, name_os(name), AtFlags::REMOVEDIR) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOTEMPTY) => {
            Err(Error::FailedPrecondition(format!("`{shown}` is a directory that is not empty (use recursive)")))
        }
        Err(e) => Err(Error::io("remove", &shown, e.into())),
    }
}

fn unlink(dir: BorrowedFd<'_>, name: &str, is_dir: bool, shown: &str) -> Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    match rustix::fs::unlinkat(dir, name_os(name), flags) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io("remove", shown, e.into())),
    }
}

/// Removes the directory `name` in `parent` and everything below it, never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &str, shown: &str) -> Result<()> {
    let fd = match rustix::fs::openat(
        parent,
        name_os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io("open directory", shown, e.into())),
    };
    let mut children = Vec::new();
    for entry in Dir::read_from(&fd).map_err(|e| Error::io("read directory", shown, e.into()))? {
        let entry = entry.map_err(|e| Error::io("read directory", shown, e.into()))?;
        let child = entry.file_name().to_string_lossy().into_owned();
        if child == "." || child == ".." {
            continue;
        }
        children.push((child, entry.file_type() == FileType::Directory));
    }
    for (child, is_dir) in children {
        let child_shown = format!("{shown}/{child}");
        if is_dir {
            remove_tree(fd.as_fd(), &child, &child_shown)?;
        } else {
            match rustix::fs::unlinkat(&fd, name_os(&child), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                // d_type can be unknown on some file systems: retry as a directory.
                Err(rustix::io::Errno::ISDIR) => remove_tree(fd.as_fd(), &child, &child_shown)?,
                Err(e) => return Err(Error::io("remove", &child_shown, e.into())),
            }
        }
    }
    unlink(parent, name, true, shown)
}

/// Changes permission bits. A final symlink is followed inside the root (Linux has no lchmod).
pub fn chmod(root: &Root, rel: &RelPath, mode: u32) -> Result<()> {
    check_mode(mode)?;
    let shown = rel.display();
    let fd = root.open(rel, OFlags::PATH, Mode::empty()).map_err(|e| Error::io("chmod", &shown, e))?;
    // fchmod does not accept O_PATH fds; the magic link names exactly the file already resolved.
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(mode)).map_err(|e| Error::io("chmod", &shown, e.into()))
}

/// Changes owner and/or group; with `follow`, of a final symlink's target (inside the root).
pub fn chown(root: &Root, rel: &RelPath, uid: Option<u32>, gid: Option<u32>, follow: bool) -> Result<()> {
    let shown = rel.display();
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    if follow || rel.is_root() {
        let fd = root.open(rel, OFlags::PATH, Mode::empty()).map_err(|e| Error::io("chown", &shown, e))?;
        return rustix::fs::chownat(&fd, c"", uid, gid, AtFlags::EMPTY_PATH)
            .map_err(|e| Error::io("chown", &shown, e.into()));
    }
    let (dir, name) = root.parent(rel)?;
    rustix::fs::chownat(&dir, name_os(name), uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("chown", &shown, e.into()))
}
