//! Recursive file-system watch over inotify. Every watched directory is opened through the root first
//! (so a watch never lands outside it) and registered by its fd's `/proc/self/fd` name. Lost events are
//! never silent: a kernel queue overflow or a client too slow for our queue both become OVERFLOW.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use rustix::fs::{Dir, FileType, Mode, OFlags};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::root::{RelPath, Root, name_os};
use crate::error::{Error, Result};

/// Directories watched at most by one stream.
pub const MAX_WATCHED_DIRS: usize = 8192;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Ready,
    Created,
    Modified,
    ClosedWrite,
    Deleted,
    RenamedFrom,
    RenamedTo,
    Attributes,
    Overflow,
    RootRemoved,
}

/// One event, with its path relative to the watched directory.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: WatchKind,
    pub path: String,
    pub is_dir: bool,
    pub cookie: u32,
}

impl WatchEvent {
    fn bare(kind: WatchKind) -> Self {
        WatchEvent { kind, path: String::new(), is_dir: false, cookie: 0 }
    }
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

struct Watcher {
    root: std::sync::Arc<Root>,
    base: RelPath,
    recursive: bool,
    watches: Watches,
    /// Watch descriptor → directory path relative to `base` ("" for the base itself).
    dirs: HashMap<WatchDescriptor, String>,
    top: Option<WatchDescriptor>,
}

impl Watcher {
    fn add(&mut self, rel_dir: String, fd: &OwnedFd) -> Result<()> {
        if self.dirs.len() >= MAX_WATCHED_DIRS {
            return Err(Error::ResourceExhausted(format!(
                "`{}` has more than {MAX_WATCHED_DIRS} directories to watch; watch a subdirectory",
                self.base.display()
            )));
        }
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let wd = self.watches.add(&proc_path, mask()).map_err(|e| Error::io("watch", &self.shown(&rel_dir), e))?;
        self.dirs.insert(wd, rel_dir);
        Ok(())
    }

    fn shown(&self, rel_dir: &str) -> String {
        if rel_dir.is_empty() { self.base.display() } else { format!("{}/{rel_dir}", self.base.display()) }
    }

    /// Watches `rel_dir` (opened without following a final symlink) and, recursively, everything below
    /// it. With `report`, entries found are reported as CREATED (they appeared before the watch did).
    fn add_tree(&mut self, rel_dir: String, fd: OwnedFd, report: &mut Vec<WatchEvent>) -> Result<()> {
        self.add(rel_dir.clone(), &fd)?;
        if !self.recursive {
            return Ok(());
        }
        let entries = Dir::read_from(&fd).map_err(|e| Error::io("read directory", &self.shown(&rel_dir), e.into()))?;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let path = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let is_dir = entry.file_type() == FileType::Directory;
            report.push(WatchEvent { kind: WatchKind::Created, path: path.clone(), is_dir, cookie: 0 });
            if is_dir
                && let Ok(child) = rustix::fs::openat(
                    &fd,
                    name_os(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            {
                self.add_tree(path, child, report)?;
            }
        }
        Ok(())
    }

    fn open_dir(&self, rel_dir: &str) -> Option<OwnedFd> {
        let mut rel = self.base.clone();
        for c in rel_dir.split('/').filter(|c| !c.is_empty()) {
            rel = rel.join(c);
        }
        let (parent, name) = self.root.parent(&rel).ok()?;
        rustix::fs::openat(
            &parent,
            name_os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }
}

/// Starts watching `rel`. Events go to `tx`, starting with READY; the watch ends when `tx` closes.
pub fn start(
    root: std::sync::Arc<Root>,
    rel: RelPath,
    recursive: bool,
    tx: mpsc::Sender<Result<WatchEvent>>,
) -> Result<()> {
    let shown = rel.display();
    let top = root.open(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::FailedPrecondition(format!("`{shown}` is not a directory"))
        } else {
            Error::io("watch", &shown, e)
        }
    })?;
    let inotify = Inotify::init().map_err(|e| Error::io("create inotify instance for", &shown, e))?;
    let mut w = Watcher { root, base: rel, recursive, watches: inotify.watches(), dirs: HashMap::new(), top: None };
    let mut ignored = Vec::new();
    w.add_tree(String::new(), top, &mut ignored)?;
    w.top = w.dirs.iter().find(|(_, p)| p.is_empty()).map(|(wd, _)| wd.clone());
    let stream =
        inotify.into_event_stream(vec![0u8; 64 << 10]).map_err(|e| Error::io("stream events of", &shown, e))?;
    tokio::spawn(run(w, stream, tx));
    Ok(())
}

async fn run(mut w: Watcher, mut stream: inotify::EventStream<Vec<u8>>, tx: mpsc::Sender<Result<WatchEvent>>) {
    let mut out = Sender { tx, overflow_pending: false };
    if !out.send(WatchEvent::bare(WatchKind::Ready)) {
        return;
    }
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            () = out.tx.closed() => return,
            // Deliver a pending OVERFLOW as soon as there is room, even if no further event comes.
            permit = out.tx.reserve(), if out.overflow_pending => {
                match permit {
                    Ok(p) => {
                        p.send(Ok(WatchEvent::bare(WatchKind::Overflow)));
                        out.overflow_pending = false;
                        continue;
                    }
                    Err(_) => return,
                }
            }
        };
        let ev = match ev {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                let _ = out.tx.try_send(Err(Error::io("read events of", &w.base.display(), e)));
                return;
            }
            None => return,
        };
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            if !out.send(WatchEvent::bare(WatchKind::Overflow)) {
                return;
            }
            continue;
        }
        if ev.mask.contains(EventMask::IGNORED) {
            w.dirs.remove(&ev.wd);
            continue;
        }
        if ev.mask.contains(EventMask::DELETE_SELF) {
            if Some(&ev.wd) == w.top.as_ref() {
                out.send(WatchEvent::bare(WatchKind::RootRemoved));
                return;
            }
            continue;
        }
        let Some(dir) = w.dirs.get(&ev.wd).cloned() else {
            continue;
        };
        let name = ev.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = match (dir.is_empty(), name.is_empty()) {
            (true, _) => name,
            (false, true) => dir,
            (false, false) => format!("{dir}/{name}"),
        };
        let is_dir = ev.mask.contains(EventMask::ISDIR);
        let Some(kind) = kind_of(ev.mask) else {
            continue;
        };
        if !out.send(WatchEvent { kind, path: path.clone(), is_dir, cookie: ev.cookie }) {
            return;
        }
        if is_dir && w.recursive && matches!(kind, WatchKind::Created | WatchKind::RenamedTo) {
            let mut found = Vec::new();
            let added = match w.open_dir(&path) {
                Some(fd) => w.add_tree(path, fd, &mut found),
                None => Ok(()),
            };
            for ev in found {
                if !out.send(ev) {
                    return;
                }
            }
            if let Err(e) = added {
                let _ = out.tx.try_send(Err(e));
                return;
            }
        }
    }
}

/// What a change event means to a client, in order of precedence; `None` for a mask no client asked
/// for.
fn kind_of(mask: EventMask) -> Option<WatchKind> {
    const KINDS: [(EventMask, WatchKind); 7] = [
        (EventMask::CREATE, WatchKind::Created),
        (EventMask::MOVED_TO, WatchKind::RenamedTo),
        (EventMask::MOVED_FROM, WatchKind::RenamedFrom),
        (EventMask::DELETE, WatchKind::Deleted),
        (EventMask::CLOSE_WRITE, WatchKind::ClosedWrite),
        (EventMask::MODIFY, WatchKind::Modified),
        (EventMask::ATTRIB, WatchKind::Attributes),
    ];
    KINDS.iter().find(|(m, _)| mask.contains(*m)).map(|(_, k)| *k)
}

/// Queues events without ever blocking the watcher; when the queue is full, events are dropped and an
/// OVERFLOW is queued as soon as there is room.
struct Sender {
    tx: mpsc::Sender<Result<WatchEvent>>,
    overflow_pending: bool,
}

impl Sender {
    /// Returns false once the client is gone.
    fn send(&mut self, ev: WatchEvent) -> bool {
        if self.overflow_pending {
            match self.tx.try_send(Ok(WatchEvent::bare(WatchKind::Overflow))) {
                Ok(()) => self.overflow_pending = false,
                Err(mpsc::error::TrySendError::Full(_)) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(Ok(ev)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow_pending = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
