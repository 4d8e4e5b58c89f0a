//! Root-confined path resolution. Every client path goes through [`Root`]: it is normalised lexically,
//! then resolved with `openat2(RESOLVE_IN_ROOT)`, so symlinks (absolute or `..`-laden) are followed as if
//! the root were `/` and can never lead out of it. Operations on a final component (unlink, rename, mkdir,
//! lstat) act on a directory fd and a single name, so they never follow a final symlink by accident.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};

pub use berth_agent_input::path::RelPath;

/// The directory the agent serves, held open as an fd for its whole life.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Where relative client paths start, as a client path (e.g. `/data`).
    data_dir: RelPath,
}

impl Root {
    /// Opens `path` as the root; relative client paths will start at `data_dir` (a path inside the root).
    pub fn new(path: &Path, data_dir: &str) -> std::io::Result<Root> {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let data_dir = normalize(&RelPath::root(), data_dir)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Root { fd, path: path.to_path_buf(), data_dir })
    }

    /// Normalises a client path: relative paths start at the data directory; `..` never climbs above `/`.
    pub fn resolve(&self, client_path: &str) -> Result<RelPath> {
        normalize(&self.data_dir, client_path)
    }

    /// The data directory as a client path.
    pub fn data_dir(&self) -> &RelPath {
        &self.data_dir
    }

    /// The host path of `rel` (lexical join; only for handing a cwd to a child process, which runs in the
    /// same mount namespace as the agent).
    pub fn host_path(&self, rel: &RelPath) -> PathBuf {
        let mut p = self.path.clone();
        for c in rel.components() {
            p.push(c);
        }
        p
    }

    /// Opens `rel`, following symlinks only inside the root.
    pub fn open(&self, rel: &RelPath, flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        loop {
            match rustix::fs::openat2(self.fd.as_fd(), rel.as_relative(), flags | OFlags::CLOEXEC, mode, how) {
                // openat2 asks for a retry when a concurrent rename raced the lookup.
                Err(rustix::io::Errno::AGAIN) => continue,
                r => return r.map_err(Into::into),
            }
        }
    }

    /// Opens the parent directory of `rel` (following symlinks inside the root) and returns it with the
    /// final component, which the caller operates on with `*at` calls that do not follow it.
    pub fn parent<'a>(&self, rel: &'a RelPath) -> Result<(OwnedFd, &'a str)> {
        let Some((parent, name)) = rel.split_last() else {
            return Err(Error::InvalidArgument("this operation cannot be applied to `/` itself".into()));
        };
        let fd = self
            .open(&parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| Error::io("open parent directory of", &rel.display(), e))?;
        Ok((fd, name))
    }
}

/// [`berth_agent_input::path::normalize`], with its refusal as the agent's error.
fn normalize(base: &RelPath, client_path: &str) -> Result<RelPath> {
    berth_agent_input::path::normalize(base, client_path).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The final component as an `OsStr` for `*at` calls.
pub fn name_os(name: &str) -> &OsStr {
    OsStr::from_bytes(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RelPath {
        RelPath::root().join("data")
    }

    // The lexical rules are tested where they live (`berth_agent_input::path`); here, their refusal as
    // the agent's error.
    #[test]
    fn nul_is_rejected() {
        assert!(matches!(normalize(&base(), "a\0b"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("secret"), b"inside").unwrap();
        std::os::unix::fs::symlink("/secret", dir.path().join("data/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", dir.path().join("data/rel")).unwrap();
        let root = Root::new(dir.path(), "/data").unwrap();
        for link in ["abs", "rel"] {
            let rel = root.resolve(link).unwrap();
            let fd = root.open(&rel, OFlags::RDONLY, Mode::empty()).unwrap();
            let mut buf = [0u8; 16];
            let n = rustix::io::read(&fd, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"inside", "{link} resolved outside the root");
        }
    }
}
