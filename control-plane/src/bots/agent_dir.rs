//! A bot's agent directory on the host, `<run_dir>/<bot>/`, and how berthd touches it. Everything a bot
//! can write is hostile input, so the directory is split by who may write:
//!
//! ```text
//! <run_dir>/<bot>/        0700, never mounted: only berthd writes here
//!     conf/               → /run/berth, read-only in the bot
//!         token           the agent's bearer token (0600), replaced by rename on every start
//!         sock/           empty: the mount point of the directory below
//!     sock/               → /run/berth/sock, read-write: the agent (and so the bot) writes here
//!         agent.sock      the agent's gRPC listener
//!         cgroup.sock     the one-shot user cgroup handoff (removed once done)
//! ```
//!
//! berthd writes only below `conf/`, which the bot cannot change, and never follows a link: directories
//! are checked to be directories (a link found in their place, e.g. left by an older layout, is removed),
//! the token is written with `O_NOFOLLOW | O_EXCL` and renamed into place. From `sock/`, which the bot
//! controls, berthd only connects, and only to a socket: [`AgentDir::open_socket`] opens the name without
//! following a link and refuses anything that is not a socket, and the connection goes through that
//! descriptor. A socket the bot put there itself reaches a listener of the bot's: no worse than an agent
//! the bot took over, and every answer from a bot is treated as hostile anyway.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::runtime::BindMount;

/// Where each bot sees its agent directory (read-only).
pub const AGENT_DIR: &str = "/run/berth";
/// The token file, inside the bot.
pub const TOKEN_IN_BOT: &str = "/run/berth/token";
/// The writable socket directory, inside the bot.
pub const SOCK_DIR_IN_BOT: &str = "/run/berth/sock";
/// The agent's gRPC socket's name in the socket directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The user cgroup handoff socket's name in the socket directory.
pub const CGROUP_SOCKET: &str = "cgroup.sock";

/// One bot's agent directory on the host.
#[derive(Debug, Clone)]
pub struct AgentDir {
    root: PathBuf,
}

impl AgentDir {
    pub fn new(root: PathBuf) -> AgentDir {
        AgentDir { root }
    }

    /// `<run_dir>/<bot>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn conf(&self) -> PathBuf {
        self.root.join("conf")
    }

    /// The directory the agent's sockets are in (writable by the bot).
    pub fn sock_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The token file on the host.
    pub fn token_path(&self) -> PathBuf {
        self.conf().join("token")
    }

    /// Creates the directories (0700), replacing anything but a directory found in their place, and gives
    /// `sock/` its own small file system (see [`SOCK_TMPFS_OPTIONS`]).
    pub fn prepare(&self) -> std::io::Result<()> {
        if let Some(run_dir) = self.root.parent() {
            std::fs::create_dir_all(run_dir)?;
        }
        for dir in [self.root.clone(), self.conf(), self.conf().join("sock"), self.sock_dir()] {
            ensure_dir(&dir)?;
        }
        if !self.sock_mounted()? {
            mount_sock(&self.sock_dir())?;
        }
        Ok(())
    }

    /// Empties `sock/` for a task about to be created: a fresh file system, so nothing an earlier run of
    /// the bot left there (files, links, a fake socket) survives into the next.
    pub fn reset_sock(&self) -> std::io::Result<()> {
        // After a reboot (`run_dir` on a tmpfs) nothing is there: prepare makes it all.
        if std::fs::symlink_metadata(self.sock_dir()).is_ok_and(|m| m.is_dir()) && self.sock_mounted()? {
            rustix::mount::unmount(self.sock_dir(), rustix::mount::UnmountFlags::DETACH)?;
        }
        self.prepare()
    }

    /// Removes the whole directory: `sock/`'s file system is detached first (so nothing the bot wrote is
    /// walked), then what berthd wrote. Blocking.
    pub fn remove(&self) -> std::io::Result<()> {
        if std::fs::symlink_metadata(self.sock_dir()).is_ok_and(|m| m.is_dir()) && self.sock_mounted()? {
            rustix::mount::unmount(self.sock_dir(), rustix::mount::UnmountFlags::DETACH)?;
        }
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether this is the layout of berthd before the split (the token and socket directly in the bot's
    /// read-write directory): such a bot's container mounts the whole directory and passes the old agent
    /// arguments, so it cannot be started safely; it has to be re-created.
    pub fn is_old_layout(&self) -> bool {
        std::fs::symlink_metadata(self.root.join("token")).is_ok()
            || std::fs::symlink_metadata(self.root.join("agent.sock")).is_ok()
    }

    /// Whether `sock/` is a mount point (a different device than its parent).
    fn sock_mounted(&self) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::symlink_metadata(self.sock_dir())?.dev() != std::fs::symlink_metadata(&self.root)?.dev())
    }

    /// The bind mounts that give the bot its view: `conf/` read-only at [`AGENT_DIR`], `sock/` writable
    /// at [`SOCK_DIR_IN_BOT`] (in this order: the second is mounted inside the first).
    pub fn mounts(&self) -> Vec<BindMount> {
        vec![
            BindMount { source: self.conf(), destination: AGENT_DIR.into(), readonly: true },
            BindMount { source: self.sock_dir(), destination: SOCK_DIR_IN_BOT.into(), readonly: false },
        ]
    }

    /// The agent's command line for this layout.
    pub fn agent_args() -> Vec<String> {
        let sock = format!("{SOCK_DIR_IN_BOT}/{AGENT_SOCKET}");
        let cgroup = format!("{SOCK_DIR_IN_BOT}/{CGROUP_SOCKET}");
        ["/sbin/berth-agent", "--socket", &sock, "--token-file", TOKEN_IN_BOT, "--user-cgroup-from", &cgroup]
            .map(String::from)
            .to_vec()
    }

    /// Writes the agent's token atomically (a temporary file created afresh without following links, 0600,
    /// synced, renamed over `token`), so an agent starting never reads half a token.
    pub fn write_token(&self, token: &str) -> std::io::Result<()> {
        self.prepare()?;
        let tmp = self.conf().join(".token.tmp");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.token_path())
    }

    /// Opens socket `name` in the socket directory as an `O_PATH` descriptor without following links;
    /// anything but a socket there is refused. Connect through `/proc/self/fd/N` of the result.
    pub fn open_socket(&self, name: &str) -> std::io::Result<OwnedFd> {
        open_socket_in(&self.sock_dir(), name)
    }
}

impl AgentDir {
    /// Hands the user cgroup's `cgroup.procs` descriptors to the agent waiting on [`CGROUP_SOCKET`] (the
    /// protocol is `berth_proto::agent::USER_CGROUP_HELLO`) and reads its answer (at most 512 bytes). Never
    /// blocks a thread: the connect and the read are asynchronous, and the caller bounds the whole with its
    /// deadline. Called only for a task this start created, before the agent serves.
    pub async fn hand_over_cgroup(&self, fds: &[OwnedFd]) -> std::io::Result<()> {
        use berth_proto::agent::{USER_CGROUP_HELLO, USER_CGROUP_MAX_FDS};
        use std::mem::MaybeUninit;
        use std::os::fd::AsFd;
        use tokio::io::AsyncReadExt;
        if fds.len() > USER_CGROUP_MAX_FDS {
            return Err(std::io::Error::other(format!("{} descriptors are too many to hand over", fds.len())));
        }
        let fd = self.open_socket(CGROUP_SOCKET)?;
        let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let mut conn = tokio::net::UnixStream::connect(via).await?;
        drop(fd);
        conn.writable().await?;
        // A fresh connection's buffer takes the 20-byte message whole (a short send is refused below).
        let sent = conn.try_io(tokio::io::Interest::WRITABLE, || {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(USER_CGROUP_MAX_FDS))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            if !control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(std::io::Error::other("the descriptors do not fit the control message"));
            }
            let iov = [std::io::IoSlice::new(USER_CGROUP_HELLO)];
            rustix::net::sendmsg(&conn, &iov, &mut control, rustix::net::SendFlags::NOSIGNAL).map_err(Into::into)
        })?;
        if sent != USER_CGROUP_HELLO.len() {
            return Err(std::io::Error::other("the handoff message was sent in part"));
        }
        let mut answer = Vec::new();
        (&mut conn).take(512).read_to_end(&mut answer).await?;
        match String::from_utf8_lossy(&answer).trim_end() {
            "ok" => Ok(()),
            other => Err(std::io::Error::other(format!("the agent refused the user cgroup: {other:?}"))),
        }
    }
}

/// The file system of a bot's `sock/`: a few inodes and no room for data (sockets need none), no device
/// nodes, set-uid files or programs. The bot can write there, so this is all it can put on the host's
/// `run_dir`, and each fresh task gets an empty one.
pub const SOCK_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=64,mode=0700";

fn mount_sock(dir: &Path) -> std::io::Result<()> {
    use rustix::mount::MountFlags;
    let flags = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    let data = std::ffi::CString::new(SOCK_TMPFS_OPTIONS).map_err(std::io::Error::other)?;
    rustix::mount::mount("berth-sock", dir, "tmpfs", flags, data.as_c_str())?;
    Ok(())
}

/// See [`AgentDir::open_socket`]: `dir` itself is opened without following a link too.
pub fn open_socket_in(dir: &Path, name: &str) -> std::io::Result<OwnedFd> {
    let nofollow = OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | nofollow, Mode::empty())?;
    let fd = rustix::fs::openat(&dir, name, OFlags::PATH | nofollow, Mode::empty())?;
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != FileType::Socket {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{name}` is a {kind:?}, not a socket (links are not followed)"),
        ));
    }
    Ok(fd)
}

/// Makes `dir` a directory of mode 0700: a directory there is kept; anything else (a link, a file) is
/// removed first. The parent must be one the bot cannot write.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            tracing::warn!(path = %dir.display(), "replacing something that is not a directory in an agent directory");
            std::fs::remove_file(dir)?;
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new().mode(0o700).create(dir)?,
        Err(e) => return Err(e),
    }
    // A directory, checked above without following links; its parent is berthd's alone.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_token_write_never_follows_a_planted_link() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dir = AgentDir::new(t.path().join("bot"));
        dir.prepare().unwrap();
        std::os::unix::fs::symlink(&victim, dir.conf().join(".token.tmp")).unwrap();
        dir.write_token("t0k3n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(dir.token_path()).unwrap(), "t0k3n");
        let mode = std::fs::metadata(dir.token_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        dir.remove().unwrap();
    }

    #[test]
    fn a_link_in_place_of_a_directory_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let root = t.path().join("bot");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("conf")).unwrap();
        let dir = AgentDir::new(root);
        dir.write_token("abc").unwrap();
        assert!(std::fs::symlink_metadata(dir.conf()).unwrap().is_dir());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "something was written through the link");
        dir.remove().unwrap();
    }

    #[test]
    fn only_a_socket_is_opened_and_links_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = AgentDir::new(t.path().join("bot"));
        dir.prepare().unwrap();
        let elsewhere = t.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.sock_dir().join(AGENT_SOCKET)).unwrap();
        let e = dir.open_socket(AGENT_SOCKET).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        std::fs::write(dir.sock_dir().join("file.sock"), "x").unwrap();
        assert!(dir.open_socket("file.sock").is_err());
        // Control: a real socket in the directory opens, and connecting through the descriptor works.
        let _l = std::os::unix::net::UnixListener::bind(dir.sock_dir().join(CGROUP_SOCKET)).unwrap();
        let fd = dir.open_socket(CGROUP_SOCKET).unwrap();
        let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        std::os::unix::net::UnixStream::connect(via).unwrap();
        dir.remove().unwrap();
        assert!(!dir.root().exists());
    }

    #[test]
    fn the_socket_directory_is_a_small_file_system_emptied_for_each_fresh_task() {
        let t = tempfile::tempdir().unwrap();
        let dir = AgentDir::new(t.path().join("bot"));
        dir.prepare().unwrap();
        // What a bot could try: fill the host's run_dir, leave a device node or a fake socket behind.
        let big = std::fs::write(dir.sock_dir().join("fill"), vec![0u8; 1 << 20]);
        assert!(big.is_err(), "1 MiB fitted in the socket directory");
        let _ = std::fs::remove_file(dir.sock_dir().join("fill"));
        std::fs::write(dir.sock_dir().join("leftover"), "x").unwrap();
        dir.reset_sock().unwrap();
        assert_eq!(std::fs::read_dir(dir.sock_dir()).unwrap().count(), 0);
        dir.remove().unwrap();
        assert!(!dir.root().exists());
        // After a reboot (run_dir on a tmpfs) nothing is there at all: a fresh start makes it again.
        dir.reset_sock().unwrap();
        assert!(dir.sock_dir().is_dir() && dir.conf().is_dir());
        dir.remove().unwrap();
    }
}
