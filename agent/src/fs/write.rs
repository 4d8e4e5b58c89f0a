//! Atomic writes. [`AtomicFile`] writes into a hidden temporary file beside the target and makes it
//! visible only on [`AtomicFile::commit`] (fsync, chmod, rename, fsync of the directory). Dropping it
//! uncommitted removes the temporary file, so an aborted or failed write leaves nothing behind.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use sha2::{Digest, Sha256};

use super::ops::mkdir_all;
use super::root::{RelPath, Root, name_os};
use crate::error::{Error, Result};

/// Mode of a new file when the client gives none.
const DEFAULT_FILE_MODE: u32 = 0o644;

/// Options for creating a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Permission bits; 0 = keep the existing file's, or 0644.
    pub mode: u32,
    pub create_parents: bool,
    pub no_overwrite: bool,
}

/// A file being written, invisible until committed.
#[derive(Debug)]
pub struct AtomicFile {
    dir: OwnedFd,
    tmp_name: String,
    final_name: String,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    mode: u32,
    owner: Option<(u32, u32)>,
    no_overwrite: bool,
    shown: String,
}

impl AtomicFile {
    /// Prepares a write to `rel`.
    pub fn create(root: &Root, rel: &RelPath, opts: WriteOptions) -> Result<AtomicFile> {
        let shown = rel.display();
        if opts.mode > 0o7777 {
            return Err(Error::InvalidArgument(format!("mode {:o} has bits outside 07777", opts.mode)));
        }
        if opts.create_parents
            && let Some((parent, _)) = rel.split_last()
        {
            mkdir_all(root, &parent, 0o755)?;
        }
        let (dir, name) = root.parent(rel)?;
        let (mut mode, mut owner) = (opts.mode, None);
        match rustix::fs::statat(&dir, name_os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if opts.no_overwrite {
                    return Err(Error::AlreadyExists(format!("`{shown}` already exists")));
                }
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(Error::FailedPrecondition(format!("`{shown}` is a directory")));
                }
                if mode == 0 && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    mode = st.st_mode & 0o7777;
                }
                owner = Some((st.st_uid, st.st_gid));
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::io("stat", &shown, e.into())),
        }
        if mode == 0 {
            mode = DEFAULT_FILE_MODE;
        }
        let tmp_name = format!(".{name}.berth-{}.tmp", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let fd = rustix::fs::openat(
            &dir,
            name_os(&tmp_name),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("create temporary file for", &shown, e.into()))?;
        Ok(AtomicFile {
            dir,
            tmp_name,
            final_name: name.to_string(),
            file: Some(File::from(fd)),
            hasher: Sha256::new(),
            written: 0,
            mode,
            owner,
            no_overwrite: opts.no_overwrite,
            shown,
        })
    }

    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::internal("write after commit"))?;
        file.write_all(data).map_err(|e| Error::io("write", &self.shown, e))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the file visible at its path. Fails, leaving nothing behind, if `expected_sha256` is given and
    /// does not match. Returns the byte count and the sha256 (hex).
    pub fn commit(mut self, expected_sha256: Option<&str>) -> Result<(u64, String)> {
        let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(want) = expected_sha256.filter(|s| !s.is_empty())
            && !want.eq_ignore_ascii_case(&digest)
        {
            return Err(Error::Aborted(format!(
                "upload to `{}` discarded: sha256 {digest} does not match the expected {want}",
                self.shown
            )));
        }
        let file = self.file.take().ok_or_else(|| Error::internal("commit twice"))?;
        let shown = self.shown.clone();
        rustix::fs::fchmod(&file, Mode::from_raw_mode(self.mode)).map_err(|e| Error::io("chmod", &shown, e.into()))?;
        if let Some((uid, gid)) = self.owner {
            // Keep the replaced file's owner; failure (not root) is not an error for the write itself.
            if let Err(e) =
                rustix::fs::fchown(&file, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
            {
                tracing::debug!(path = %shown, error = %e, "could not keep the owner of the replaced file");
            }
        }
        file.sync_all().map_err(|e| Error::io("fsync", &shown, e))?;
        drop(file);
        let flags = if self.no_overwrite { RenameFlags::NOREPLACE } else { RenameFlags::empty() };
        rustix::fs::renameat_with(&self.dir, name_os(&self.tmp_name), &self.dir, name_os(&self.final_name), flags)
            .map_err(|e| Error::io("rename into place", &shown, e.into()))?;
        self.tmp_name.clear();
        rustix::fs::fsync(self.dir.as_fd()).map_err(|e| Error::io("fsync directory of", &shown, e.into()))?;
        Ok((self.written, digest))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.tmp_name.is_empty() {
            return;
        }
        self.file.take();
        if let Err(e) = rustix::fs::unlinkat(&self.dir, name_os(&self.tmp_name), AtFlags::empty()) {
            tracing::warn!(path = %self.shown, error = %e, "failed to remove temporary file of an aborted write");
        }
    }
}

/// Writes a whole file atomically.
pub fn write_file(root: &Root, rel: &RelPath, content: &[u8], opts: WriteOptions) -> Result<(u64, String)> {
    let mut f = AtomicFile::create(root, rel, opts)?;
    f.write(content)?;
    f.commit(None)
}
