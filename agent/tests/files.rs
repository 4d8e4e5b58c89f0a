//! File RPCs through the real agent: reads, atomic writes, listing caps and paging, stat, mutations,
//! typed failures, and confinement of every path (symlinks included) to the agent's root.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use berth_proto::agent::v1 as pb;
use common::*;

fn read_lines(path: &str, start: u64, max: u64) -> pb::ReadFileRequest {
    pb::ReadFileRequest {
        path: path.into(),
        mode: Some(pb::read_file_request::Mode::Lines(pb::LineWindow { start_line: start, max_lines: max })),
        max_bytes: 0,
    }
}

fn read_bytes(path: &str, offset: u64, length: u64) -> pb::ReadFileRequest {
    pb::ReadFileRequest {
        path: path.into(),
        mode: Some(pb::read_file_request::Mode::Bytes(pb::ByteRange { offset, length })),
        max_bytes: 0,
    }
}

fn write(path: &str, content: &[u8]) -> pb::WriteFileRequest {
    pb::WriteFileRequest { path: path.into(), content: content.to_vec(), ..Default::default() }
}

#[tokio::test]
async fn read_line_windows_binary_detection_and_byte_ranges() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let text: String = (0..10).map(|i| format!("line {i}\n")).collect();
    std::fs::write(agent.host("/data/t.txt"), &text).unwrap();
    let r = c.read_file(read_lines("t.txt", 2, 3)).await.unwrap().into_inner();
    assert_eq!(r.content, b"line 2\nline 3\nline 4\n");
    assert_eq!((r.total_lines, r.lines_returned, r.binary, r.truncated), (10, 3, false, false));
    let r = c.read_file(pb::ReadFileRequest { max_bytes: 10, ..read_lines("t.txt", 0, 0) }).await.unwrap().into_inner();
    assert_eq!(r.content, b"line 0\n");
    assert!(r.truncated);
    let r = c.read_file(read_lines("t.txt", 0, 0)).await.unwrap().into_inner();
    assert_eq!(r.content, text.as_bytes());
    std::fs::write(agent.host("/data/bin"), b"ab\0cd").unwrap();
    let r = c.read_file(read_lines("/data/bin", 0, 0)).await.unwrap().into_inner();
    assert!(r.binary);
    assert!(r.content.is_empty());
    let r = c.read_file(read_bytes("bin", 1, 3)).await.unwrap().into_inner();
    assert_eq!(r.content, b"b\0c");
    assert_eq!(r.file_size_bytes, 5);
}

#[tokio::test]
async fn read_failures_are_typed() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let err = c.read_file(read_lines("missing.txt", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("/data/missing.txt"), "{}", err.message());
    std::fs::create_dir(agent.host("/data/dir")).unwrap();
    let err = c.read_file(read_lines("dir", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is a directory"), "{}", err.message());
    let err = c.read_file(read_lines("a\0b", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn permission_denied_is_reported_as_such() {
    // An unprivileged agent (uid 65534) meets a root-only file.
    let agent = TestAgent::start_as(Some(65534)).await;
    let secret = agent.host("/data/secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = agent.client().await;
    let err = c.read_file(read_lines("secret", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = c.write_file(write("/etc-owned-by-root", b"x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn writes_are_atomic_keep_mode_and_leave_no_temp_files() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = c.write_file(write("notes/a.md", b"v1")).await.unwrap_err();
    assert_eq!(r.code(), tonic::Code::NotFound, "parents are not created unless asked");
    let req = pb::WriteFileRequest { create_parents: true, mode: 0o600, ..write("notes/a.md", b"v1") };
    let r = c.write_file(req).await.unwrap().into_inner();
    assert_eq!(r.bytes_written, 2);
    assert_eq!(r.sha256, "3bfc269594ef649228e9a74bab00f042efc91d5acc6fbee31a382e80d42388fe");
    let host = agent.host("/data/notes/a.md");
    assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o600);
    let inode_before = std::fs::metadata(&host).unwrap().ino();
    c.write_file(write("notes/a.md", b"version two")).await.unwrap();
    assert_eq!(std::fs::read(&host).unwrap(), b"version two");
    assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o600, "mode kept");
    assert_ne!(std::fs::metadata(&host).unwrap().ino(), inode_before, "replaced by rename, not rewritten");
    let names: Vec<_> =
        std::fs::read_dir(agent.host("/data/notes")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "temporary files left: {names:?}");
    let err = c.write_file(pb::WriteFileRequest { no_overwrite: true, ..write("notes/a.md", b"x") }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = c.write_file(write("notes", b"x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Larger than tonic's default 4 MiB message limit.
    let big = vec![7u8; 12 << 20];
    let r = c.write_file(write("big.bin", &big)).await.unwrap().into_inner();
    assert_eq!(r.bytes_written, big.len() as u64);
}

#[tokio::test]
async fn list_is_recursive_sorted_paged_and_capped() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    for d in ["a", "a/b", "c"] {
        std::fs::create_dir(agent.host(&format!("/data/{d}"))).unwrap();
    }
    for f in ["a/1", "a/b/2", "c/3", "top"] {
        std::fs::write(agent.host(&format!("/data/{f}")), f).unwrap();
    }
    symlink("/", agent.host("/data/c/root-link")).unwrap();
    let flat = c.list_dir(pb::ListDirRequest { path: "".into(), ..Default::default() }).await.unwrap().into_inner();
    let names: Vec<_> = flat.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["a", "c", "top"]);
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListDirRequest { recursive: true, page_size: 2, page_token: token, ..Default::default() };
        let page = c.list_dir(req).await.unwrap().into_inner();
        assert_eq!(page.total_entries, 8);
        all.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["a", "a/1", "a/b", "a/b/2", "c", "c/3", "c/root-link", "top"]);
    let link = all.iter().find(|e| e.path == "c/root-link").unwrap();
    assert_eq!(link.r#type, pb::FileType::Symlink as i32);
    assert_eq!(link.symlink_target, "/");
    let req = pb::ListDirRequest { recursive: true, max_depth: 2, ..Default::default() };
    let page = c.list_dir(req).await.unwrap().into_inner();
    assert!(!page.entries.iter().any(|e| e.path == "a/b/2"));
    let req = pb::ListDirRequest { recursive: true, max_entries: 5, ..Default::default() };
    let err = c.list_dir(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let err = c.list_dir(pb::ListDirRequest { path: "top".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = c.list_dir(pb::ListDirRequest { path: "nope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn stat_describes_links_and_targets() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    std::fs::write(agent.host("/data/f"), b"12345").unwrap();
    std::os::unix::fs::chown(agent.host("/data/f"), Some(1234), Some(4321)).unwrap();
    symlink("f", agent.host("/data/l")).unwrap();
    let i =
        c.stat(pb::StatRequest { path: "l".into(), follow_symlinks: false }).await.unwrap().into_inner().info.unwrap();
    assert_eq!(i.r#type, pb::FileType::Symlink as i32);
    assert_eq!(i.symlink_target, "f");
    let i =
        c.stat(pb::StatRequest { path: "l".into(), follow_symlinks: true }).await.unwrap().into_inner().info.unwrap();
    assert_eq!(i.r#type, pb::FileType::File as i32);
    assert_eq!((i.size_bytes, i.uid, i.gid), (5, 1234, 4321));
    assert!(i.mtime_ns > 1_600_000_000_000_000_000);
    let err = c.stat(pb::StatRequest { path: "ghost".into(), follow_symlinks: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn mkdir_rename_delete_chmod_chown() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = c.mkdir(pb::MkdirRequest { path: "x/y/z".into(), parents: true, mode: 0 }).await.unwrap().into_inner();
    assert!(r.created);
    let r = c.mkdir(pb::MkdirRequest { path: "x/y/z".into(), parents: true, mode: 0 }).await.unwrap().into_inner();
    assert!(!r.created);
    let err = c.mkdir(pb::MkdirRequest { path: "x".into(), parents: false, mode: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = c.mkdir(pb::MkdirRequest { path: "q/r".into(), parents: false, mode: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    std::fs::write(agent.host("/data/x/y/z/f"), b"f").unwrap();
    let req = pb::RenameRequest {
        from_path: "x/y/z/f".into(),
        to_path: "moved/g".into(),
        no_overwrite: false,
        create_parents: true,
    };
    c.rename(req).await.unwrap();
    assert_eq!(std::fs::read(agent.host("/data/moved/g")).unwrap(), b"f");
    std::fs::write(agent.host("/data/other"), b"o").unwrap();
    let req = pb::RenameRequest {
        from_path: "other".into(),
        to_path: "moved/g".into(),
        no_overwrite: true,
        create_parents: false,
    };
    assert_eq!(c.rename(req).await.unwrap_err().code(), tonic::Code::AlreadyExists);
    let req = pb::RenameRequest { from_path: "nothing".into(), to_path: "x2".into(), ..Default::default() };
    assert_eq!(c.rename(req).await.unwrap_err().code(), tonic::Code::NotFound);
    c.chmod(pb::ChmodRequest { path: "moved/g".into(), mode: 0o751 }).await.unwrap();
    assert_eq!(std::fs::metadata(agent.host("/data/moved/g")).unwrap().permissions().mode() & 0o7777, 0o751);
    let err = c.chmod(pb::ChmodRequest { path: "moved/g".into(), mode: 0o170000 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    c.chown(pb::ChownRequest { path: "moved/g".into(), uid: Some(42), gid: None, follow_symlinks: false })
        .await
        .unwrap();
    let m = std::fs::metadata(agent.host("/data/moved/g")).unwrap();
    assert_eq!((m.uid(), m.gid()), (42, 0));
    let err = c.delete(pb::DeleteRequest { path: "x".into(), recursive: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    symlink(agent.host("/data/moved"), agent.host("/data/x/y/link-out")).unwrap();
    let r = c.delete(pb::DeleteRequest { path: "x".into(), recursive: true }).await.unwrap().into_inner();
    assert!(r.existed);
    assert!(!agent.host("/data/x").exists());
    assert!(agent.host("/data/moved/g").exists(), "recursive delete followed a symlink");
    let r = c.delete(pb::DeleteRequest { path: "x".into(), recursive: true }).await.unwrap().into_inner();
    assert!(!r.existed, "delete is idempotent");
    let err = c.delete(pb::DeleteRequest { path: "/".into(), recursive: true }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn no_path_escapes_the_root() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // A file outside the root that escapes would reach.
    let outside = agent.dir.path().join("outside.txt");
    std::fs::write(&outside, b"host secret").unwrap();
    std::fs::write(agent.host("/outside.txt"), b"inside").unwrap();
    symlink(&outside, agent.host("/data/abs-link")).unwrap();
    symlink("../../../../../../outside.txt", agent.host("/data/rel-link")).unwrap();
    symlink(agent.dir.path(), agent.host("/data/dir-link")).unwrap();
    for p in ["abs-link", "rel-link", "../../outside.txt", "/../outside.txt"] {
        let r = c.read_file(read_lines(p, 0, 0)).await;
        match r {
            Ok(r) => assert_eq!(r.into_inner().content, b"inside", "{p} escaped"),
            Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{p}: {e:?}"),
        }
    }
    // Writing through a directory symlink lands inside the root, never on the host path.
    let req = pb::WriteFileRequest { create_parents: true, ..write("dir-link/outside.txt", b"pwned") };
    let _ = c.write_file(req).await;
    assert_eq!(std::fs::read(&outside).unwrap(), b"host secret");
    // chmod through a symlink changes the in-root target only.
    let _ = c.chmod(pb::ChmodRequest { path: "abs-link".into(), mode: 0o777 }).await;
    assert_ne!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o777);
    // Renaming the link moves the link, not the file behind it.
    let req = pb::RenameRequest { from_path: "abs-link".into(), to_path: "renamed".into(), ..Default::default() };
    c.rename(req).await.unwrap();
    assert!(outside.exists());
    let r = c.delete(pb::DeleteRequest { path: "renamed".into(), recursive: true }).await.unwrap().into_inner();
    assert!(r.existed);
    assert!(outside.exists(), "delete followed a symlink out of the root");
}
