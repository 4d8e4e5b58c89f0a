//! The daemon's hold on its host resources: the API's Unix socket, created so it appears only when it
//! accepts connections, and the lock that keeps a second berthd off the same state directory.

use std::path::Path;

use tokio::net::UnixListener;

use super::{DaemonError, Doing};

/// Listens on `path` so that the socket appears only when it accepts connections, already 0600: bound and
/// chmod-ed under a temporary name, then renamed into place. A live berthd already on `path` is an error;
/// a stale socket (a crash) is replaced.
pub(super) fn unix(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(DaemonError::new(format!("another berthd is already listening on {}", path.display())));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{}.tmp", std::process::id(), crate::bots::new_token().get(..8).unwrap_or("x")));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let unix = UnixListener::bind(&tmp).doing(|| format!("cannot listen on {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .doing(|| format!("cannot restrict {}", tmp.display()))?;
    std::fs::rename(&tmp, path).doing(|| format!("cannot move the socket into place at {}", path.display()))?;
    Ok(unix)
}

/// Takes an exclusive lock on `<state-dir>/berthd.lock` (released by the kernel when the file is closed:
/// the daemon stops or the process exits, however it exits), so a second berthd on the same state
/// refuses to start instead of racing the first.
pub(super) fn lock_state_dir(dir: &Path) -> Result<std::fs::File, DaemonError> {
    let path = dir.join("berthd.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .doing(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(DaemonError::new(format!("another berthd is already running on the state directory {}", dir.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).doing(|| format!("cannot lock {}", path.display())),
    }
}
