//! Domain types ⇄ generated protobuf types.

use berth_proto::agent::v1 as pb;

use crate::fs::info::{FileInfo, Kind};
use crate::fs::watch::{WatchEvent, WatchKind};
use crate::process::exit::{Exit, Reason};

pub fn file_info(i: FileInfo) -> pb::FileInfo {
    let kind = match i.kind {
        Kind::File => pb::FileType::File,
        Kind::Directory => pb::FileType::Directory,
        Kind::Symlink => pb::FileType::Symlink,
        Kind::Other => pb::FileType::Other,
    };
    pb::FileInfo {
        path: i.path,
        r#type: kind as i32,
        size_bytes: i.size_bytes,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        mtime_ns: i.mtime_ns,
        symlink_target: i.symlink_target,
        nlink: i.nlink,
        inode: i.inode,
    }
}

pub fn exited_frame(e: Exit, stderr_tail: Vec<u8>) -> pb::Exited {
    let reason = match e.reason {
        Reason::Exited => pb::ExitReason::Exited,
        Reason::Timeout => pb::ExitReason::Timeout,
        Reason::ClientGone => pb::ExitReason::ClientGone,
        Reason::Killed => pb::ExitReason::Killed,
        Reason::ProtocolError => pb::ExitReason::ProtocolError,
    };
    pb::Exited {
        exit_code: e.code,
        signal: e.signal,
        core_dumped: e.core_dumped,
        reason: reason as i32,
        stderr_tail,
        message: e.message,
    }
}

pub fn watch_event(e: WatchEvent) -> pb::WatchEvent {
    let kind = match e.kind {
        WatchKind::Ready => pb::WatchEventKind::Ready,
        WatchKind::Created => pb::WatchEventKind::Created,
        WatchKind::Modified => pb::WatchEventKind::Modified,
        WatchKind::ClosedWrite => pb::WatchEventKind::ClosedWrite,
        WatchKind::Deleted => pb::WatchEventKind::Deleted,
        WatchKind::RenamedFrom => pb::WatchEventKind::RenamedFrom,
        WatchKind::RenamedTo => pb::WatchEventKind::RenamedTo,
        WatchKind::Attributes => pb::WatchEventKind::Attributes,
        WatchKind::Overflow => pb::WatchEventKind::Overflow,
        WatchKind::RootRemoved => pb::WatchEventKind::RootRemoved,
    };
    pb::WatchEvent { kind: kind as i32, path: e.path, is_dir: e.is_dir, rename_cookie: e.cookie }
}
