//! A bot's data end to end on a real containerd, through berthd and the `berth` CLI: snapshots of a
//! running bot (its exec session lives on), rollback in place across several snapshots, export → import
//! into another bot, keep-data on delete and restore on create, every file compared by sha256, mode and
//! link target; hostile archives refused with nothing changed; nothing of ours left in containerd after.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::io::Write;
use std::time::Duration;

use berth_control_plane::agent_client;
use berth_proto::agent::v1 as apb;
use berth_proto::controlplane::v1 as pb;
use common::{argv, exec_open};
use pb::data_service_client::DataServiceClient;
use support::berthd::TestBerthd;
use tonic::transport::Channel;

async fn data(b: &TestBerthd) -> DataServiceClient<Channel> {
    DataServiceClient::new(agent_client::channel(b.socket.to_str().unwrap()).await.unwrap())
        .max_decoding_message_size(64 << 20)
}

/// Writes random files (one large), nested directories, modes, relative and absolute symlinks and a
/// hard link.
const POPULATE: &str = r#"set -e
mkdir -p /data/docs/deep/er /data/bin /data/empty
head -c 12000000 /dev/urandom > /data/big.bin
for i in 1 2 3 4 5 6 7 8; do head -c $((i * 1000 + 7)) /dev/urandom > /data/docs/f$i; done
echo "secret" > /data/docs/deep/er/key && chmod 600 /data/docs/deep/er/key
printf '#!/bin/sh\necho hi\n' > /data/bin/tool && chmod 755 /data/bin/tool
chmod 711 /data/docs/deep
ln -s ../docs/f1 /data/bin/rel-link
ln -s /data/docs/f2 /data/abs-link
ln -s /usr/bin/env /data/bin/env-link
ln /data/docs/f3 /data/docs/f3-hard"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_rollback_export_import_keep_and_restore() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "keeper"]);
    b.sh("keeper", POPULATE).await;
    let fp_a = b.fingerprint("keeper").await;

    // A live exec session across a snapshot: the bot is frozen for the copy, not restarted.
    let mut client = b.agent("keeper").await;
    let mut start = argv(&["sh", "-c", "while read -r l; do echo got $l; done"]);
    start.close_stdin = false;
    let (tx, mut stream) = exec_open(&mut client, start).await.unwrap();
    let mut echo = async |line: &str| {
        let frame = apb::exec_request::Frame::Stdin(format!("{line}\n").into_bytes());
        tx.send(apb::ExecRequest { frame: Some(frame) }).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.unwrap().unwrap().unwrap();
            if let Some(apb::exec_response::Frame::Stdout(out)) = msg.frame {
                return String::from_utf8(out).unwrap();
            }
        }
    };
    assert_eq!(echo("one").await, "got one\n");
    // And a live MCP session (a line-echoing stdio server: `cat`), through berthd, across the same snapshot.
    let (mcp_tx, mcp_rx) = tokio::sync::mpsc::channel(4);
    let open = apb::McpOpen { command: "cat".into(), ..Default::default() };
    mcp_tx.send(apb::McpSessionRequest { frame: Some(apb::mcp_session_request::Frame::Open(open)) }).await.unwrap();
    let mut mcp = b
        .agent("keeper")
        .await
        .mcp_session(tokio_stream::wrappers::ReceiverStream::new(mcp_rx))
        .await
        .unwrap()
        .into_inner();
    let mut ping = async |id: u32| {
        let msg = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let frame = apb::mcp_session_request::Frame::Message(msg.clone().into_bytes());
        mcp_tx.send(apb::McpSessionRequest { frame: Some(frame) }).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), mcp.message()).await.unwrap().unwrap().unwrap();
            if let Some(apb::mcp_session_response::Frame::Message(out)) = m.frame {
                assert_eq!(String::from_utf8(out).unwrap(), msg);
                return;
            }
        }
    };
    ping(1).await;
    let out = b.cli(&["snapshot", "create", "keeper", "--name", "a"]);
    assert!(out.starts_with("a ("), "{out}");
    assert_eq!(echo("two").await, "got two\n", "the exec session must survive a snapshot");
    ping(2).await;

    // Change things; snapshot again with a generated name.
    b.sh("keeper", "set -e; rm /data/docs/f4; echo changed > /data/docs/f5; chmod 700 /data/bin; mkdir /data/new; ln -sf f6 /data/docs/f7").await;
    let fp_b = b.fingerprint("keeper").await;
    assert_ne!(fp_a, fp_b);
    let out = b.cli(&["snapshot", "create", "keeper"]);
    let b_name = out.split_whitespace().next().unwrap().to_string();
    assert!(b_name.starts_with("snap-"), "{out}");
    assert_eq!(echo("three").await, "got three\n");

    // Unsnapshotted changes, then roll back to each snapshot in turn.
    b.sh("keeper", "rm -rf /data/docs; head -c 5000 /dev/urandom > /data/big.bin").await;
    b.cli(&["snapshot", "rollback", "keeper", "a"]);
    assert_eq!(b.fingerprint("keeper").await, fp_a, "rollback to a");
    b.cli(&["snapshot", "rollback", "keeper", &b_name]);
    assert_eq!(b.fingerprint("keeper").await, fp_b, "rollback to {b_name}");
    b.cli(&["snapshot", "rollback", "keeper", "a"]);
    assert_eq!(b.fingerprint("keeper").await, fp_a, "rollback to a again");

    // A snapshot taken after a rollback is layered on it; deleting its parent hides the parent at once
    // and keeps what the child needs.
    b.sh("keeper", "echo after-rollback > /data/docs/f8").await;
    let fp_c = b.fingerprint("keeper").await;
    b.cli(&["snapshot", "create", "keeper", "--name", "c"]);
    let ls = b.cli(&["snapshot", "ls", "keeper", "--json"]);
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let c = ls.as_array().unwrap().iter().find(|s| s["name"] == "c").unwrap();
    assert_eq!(c["parent"], "a", "{ls}");
    assert!(c["size_bytes"].as_u64().unwrap() > 0, "{ls}");
    b.cli(&["snapshot", "rm", "keeper", "a"]);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&b.cli(&["snapshot", "ls", "keeper", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec![b_name.clone(), "c".to_string()]);
    b.sh("keeper", "rm -rf /data/*").await;
    b.cli(&["snapshot", "rollback", "keeper", "c"]);
    assert_eq!(b.fingerprint("keeper").await, fp_c, "rollback to c, whose parent was deleted");

    // Export (running bot) → import into another bot.
    let archive = b.dir.path().join("keeper.tar.zst");
    b.cli(&["data", "export", "keeper", "-o", archive.to_str().unwrap()]);
    b.cli(&["bot", "create", "copy"]);
    b.sh("copy", "mkdir -p /data && echo stale > /data/stale").await;
    let out = b.cli(&["data", "import", "copy", archive.to_str().unwrap(), "--replace"]);
    assert!(out.contains("verified against its manifest"), "{out}");
    assert_eq!(b.fingerprint("copy").await, fp_c, "export → import");
    // Merge keeps what the archive does not have.
    b.sh("copy", "echo mine > /data/mine").await;
    let gz = b.dir.path().join("keeper.tar.gz");
    b.cli(&["data", "export", "keeper", "-o", gz.to_str().unwrap(), "--compression", "gzip"]);
    b.cli(&["data", "import", "copy", gz.to_str().unwrap()]);
    assert_eq!(b.sh("copy", "cat /data/mine").await, "mine\n");
    // The import left an undo point.
    let snaps = b.cli(&["snapshot", "ls", "copy"]);
    assert!(snaps.contains("pre-import-"), "{snaps}");

    // Keep the data on delete, restore it on create.
    b.cli(&["bot", "rm", "keeper", "--keep-data"]);
    let out = b.cli(&["bot", "create", "keeper", "--restore"]);
    assert!(out.contains("keeper running"), "{out}");
    assert_eq!(b.fingerprint("keeper").await, fp_c, "keep-data → restore");
    assert!(b.cli(&["snapshot", "ls", "keeper", "--json"]).trim() == "[]", "a restored bot starts without snapshots");
    // Restoring what was never kept is an error, and no bot is made.
    let o = b.berth(&["bot", "create", "never", "--restore"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no kept data"), "{}", String::from_utf8_lossy(&o.stderr));

    // Every operation is on record.
    let ops: serde_json::Value = serde_json::from_str(&b.cli(&["ops", "ls", "--json", "--limit", "100"])).unwrap();
    let ops = ops.as_array().unwrap();
    for kind in ["snapshot", "rollback", "export", "import", "backup", "restore"] {
        assert!(ops.iter().any(|o| o["kind"] == kind && o["state"] == "succeeded"), "no succeeded {kind}: {ops:?}");
    }
    assert!(ops.iter().all(|o| o["state"] != "running"), "{ops:?}");

    // Deleting every bot leaves nothing of ours in containerd: no snapshot besides the image's layers.
    drop(tx);
    b.cli(&["bot", "rm", "keeper"]);
    b.cli(&["bot", "rm", "copy"]);
    let left = b.containerd.ctr(&["snapshots", "ls"]);
    assert!(!left.contains("berth.") && !left.contains("bot-"), "snapshots left behind:\n{left}");
}

/// A tar header with any path (the `tar` crate refuses `..` and absolute paths, rightly).
fn raw_entry(tar: &mut Vec<u8>, path: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    if matches!(kind, tar::EntryType::Char) {
        h.set_device_major(1).ok();
        h.set_device_minor(3).ok();
    }
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

async fn import(b: &TestBerthd, bot: &str, archive: Vec<u8>) -> Result<pb::ImportDataResponse, tonic::Status> {
    let mut msgs = vec![pb::ImportDataChunk { bot: bot.into(), unverified: true, ..Default::default() }];
    msgs.extend(archive.chunks(1 << 20).map(|c| pb::ImportDataChunk { data: c.to_vec(), ..Default::default() }));
    data(b).await.import_data(tokio_stream::iter(msgs)).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_and_change_nothing() {
    let b = TestBerthd::start_with(None, &["--import-max-bytes", "67108864"]);
    b.cli(&["bot", "create", "target"]);
    b.sh("target", "mkdir -p /data/d && echo original > /data/d/file && ln -s /etc /data/etc-link && echo x > /data/x")
        .await;
    let before = b.fingerprint("target").await;
    // The agent's start time: a refused archive must not even restart the bot.
    let started = b.sh("target", "cut -d' ' -f22 /proc/1/stat").await;

    let file = |p: &str| {
        let mut t = Vec::new();
        raw_entry(&mut t, p, tar::EntryType::Regular, "", b"pwned\n");
        finish(t)
    };
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("traversal", file("data/../../etc/berth-pwned"), "`..` is not allowed"),
        ("absolute path", file("/etc/berth-pwned"), "absolute paths are not allowed"),
        ("outside data/", file("etc/berth-pwned"), "must be under `data/`"),
    ];
    let mut t = Vec::new();
    raw_entry(&mut t, "data/up", tar::EntryType::Symlink, "../../../etc", b"");
    cases.push(("symlink escaping the root", finish(t), "points outside the data root"));
    let mut t = Vec::new();
    raw_entry(&mut t, "data/esc", tar::EntryType::Symlink, "/etc", b"");
    raw_entry(&mut t, "data/esc/berth-pwned", tar::EntryType::Regular, "", b"pwned\n");
    cases.push(("write through an archive's symlink", finish(t), "written through the symbolic link"));
    let mut t = Vec::new();
    raw_entry(&mut t, "data/h", tar::EntryType::Link, "data/../../etc/passwd", b"");
    cases.push(("hard link escaping the root", finish(t), "hard link points outside"));
    let mut t = Vec::new();
    raw_entry(&mut t, "data/h", tar::EntryType::Link, "data/d/file", b"");
    cases.push(("hard link to a file the archive did not make", finish(t), "did not create"));
    let mut t = Vec::new();
    raw_entry(&mut t, "data/null", tar::EntryType::Char, "", b"");
    cases.push(("device node", finish(t), "device nodes are not allowed"));
    // A 1000:1 gzip bomb: 256 MiB of zeros, over the configured 64 MiB limit.
    let mut t = Vec::new();
    let zeros = vec![0u8; 256 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_path("data/zeros").unwrap();
    h.set_size(zeros.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(&zeros);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&finish(t)).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < (256 << 20) / 900, "the bomb is not 1000:1 ({} bytes)", bomb.len());
    cases.push(("gzip bomb", bomb, "expands beyond the limit"));
    cases.push(("garbage", b"this is not an archive at all, not even close to one".repeat(20), "corrupt"));

    for (what, archive, expect) in cases {
        let err = import(&b, "target", archive).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(expect), "{what}: {}", err.message());
        assert_eq!(b.fingerprint("target").await, before, "{what} changed the bot's data");
        assert_eq!(b.sh("target", "cut -d' ' -f22 /proc/1/stat").await, started, "{what} restarted the bot");
    }
    // An archive that is fine in itself but would write through a symbolic link the bot has is found
    // only when applied: after the bot was stopped. It is refused, the data is unchanged, the bot runs.
    let err = import(&b, "target", file("data/etc-link/berth-pwned")).await.expect_err("bot's own symlink");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("written through the symbolic link `etc-link`"), "{}", err.message());
    assert_eq!(b.fingerprint("target").await, before);
    assert!(!b.sh("target", "ls /etc").await.contains("berth-pwned"), "the bot's /etc was written to");
    assert!(!std::path::Path::new("/etc/berth-pwned").exists(), "the host was written to");
    // Refused imports leave no undo snapshots behind and are recorded as failed.
    assert_eq!(b.cli(&["snapshot", "ls", "target", "--json"]).trim(), "[]");
    let ops: serde_json::Value = serde_json::from_str(&b.cli(&["ops", "ls", "target", "--json"])).unwrap();
    assert!(ops.as_array().unwrap().iter().all(|o| o["state"] == "failed" && o["kind"] == "import"), "{ops}");
    // Bad requests get precise codes.
    let mut d = data(&b).await;
    let e = d.rollback(pb::RollbackRequest { bot: "target".into(), snapshot: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e =
        d.create_snapshot(pb::CreateSnapshotRequest { bot: "target".into(), name: "../x".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = d.list_snapshots(pb::ListSnapshotsRequest { bot: "ghost".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    d.create_snapshot(pb::CreateSnapshotRequest { bot: "target".into(), name: "s".into() }).await.unwrap();
    let e = d.create_snapshot(pb::CreateSnapshotRequest { bot: "target".into(), name: "s".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_cannot_be_verified_never_replaces_data() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "keep"]);
    b.sh("keep", "mkdir -p /data/d && for i in $(seq 1 20); do echo file $i > /data/d/f$i; done").await;
    let before = b.fingerprint("keep").await;
    // An uncompressed export of its own, cut at the entry boundary before manifest.json (the last entry).
    let whole = b.dir.path().join("whole.tar");
    b.cli(&["data", "export", "keep", "-o", whole.to_str().unwrap(), "--compression", "none"]);
    let bytes = std::fs::read(&whole).unwrap();
    let at = (0..bytes.len()).step_by(512).find(|&i| bytes[i..].starts_with(b"manifest.json\0")).unwrap();
    let cut = b.dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..at]).unwrap();
    let refused = |args: &[&str]| {
        let o = b.berth(args).output().unwrap();
        assert!(!o.status.success(), "berth {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for archive in [cut.to_str().unwrap(), "/dev/null"] {
        let err = refused(&["data", "import", "keep", archive, "--replace"]);
        assert!(err.contains("no manifest.json") && err.contains("nothing was changed"), "{archive}: {err}");
        assert_eq!(b.fingerprint("keep").await, before, "a replace-import of {archive} changed the data");
        // A merge of it needs the caller to say it accepts an unverified archive.
        let err = refused(&["data", "import", "keep", archive]);
        assert!(err.contains("--unverified"), "{archive}: {err}");
        assert_eq!(b.fingerprint("keep").await, before);
    }
    let err = refused(&["data", "import", "keep", cut.to_str().unwrap(), "--replace", "--unverified"]);
    assert!(err.contains("cannot be used with"), "{err}");
    // Control: the same cut archive merges when asked to, and the whole export replaces, saying how to undo.
    let out = b.cli(&["data", "import", "keep", cut.to_str().unwrap(), "--unverified"]);
    assert!(out.contains("not verified") && out.contains("to undo: berth snapshot rollback keep pre-import-"), "{out}");
    assert_eq!(b.fingerprint("keep").await, before);
    b.sh("keep", "rm /data/d/f1 && echo changed > /data/d/f2").await;
    let out = b.cli(&["data", "import", "keep", whole.to_str().unwrap(), "--replace"]);
    assert!(out.contains("verified against its manifest"), "{out}");
    assert_eq!(b.fingerprint("keep").await, before);
    // The undo the CLI printed works.
    b.sh("keep", "echo oops > /data/d/f3").await;
    let changed = b.fingerprint("keep").await;
    let out = b.cli(&["data", "import", "keep", whole.to_str().unwrap(), "--replace"]);
    let undo = out.split("to undo: ").nth(1).unwrap().trim();
    let args: Vec<&str> = undo.split_whitespace().skip(1).collect();
    assert_eq!(b.fingerprint("keep").await, before);
    b.cli(&args);
    assert_eq!(b.fingerprint("keep").await, changed, "the printed undo did not bring back the data before the import");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_of_uploads_cut_short_are_removed_at_the_next_start() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "tidy"]);
    // What a SIGKILL of the agent in the middle of an upload leaves, deep in /data, and files that only look
    // alike (a user's own, a name that is not an upload's).
    b.sh(
        "tidy",
        "mkdir -p /data/a/b && echo half > /data/a/b/.big.bin.berth-0123456789ab.tmp \
         && echo mine > /data/a/keep.tmp && echo mine > /data/.x.berth-nothex00000.tmp",
    )
    .await;
    b.cli(&["bot", "stop", "tidy"]);
    b.cli(&["bot", "start", "tidy"]);
    let mut left = String::new();
    for _ in 0..50 {
        left = b.sh("tidy", "find /data -name '*.tmp' | sort").await;
        if !left.contains("berth-0123456789ab") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "/data/.x.berth-nothex00000.tmp\n/data/a/keep.tmp\n");
}

/// Type, path, mode, links, size on disk (KiB) and sha256 of every entry under the directories a layer
/// test changes: /data and parts of the image (whose deletions are overlay whiteouts and opaque dirs).
const LAYER_PRINT: &str = r#"for d in /data /etc /usr/sbin /root; do cd $d && find . | sort | while read -r f; do
  if [ -L "$f" ]; then echo "L $d/$f -> $(readlink "$f")";
  elif [ -d "$f" ]; then echo "D $d/$f $(stat -c %a "$f")";
  else echo "F $d/$f $(stat -c '%a %h' "$f") $(du -k "$f" | cut -f1) $(sha256sum < "$f" | cut -d' ' -f1)"; fi
done; done"#;

/// How many layers the bot's root file system is mounted from, as the bot sees it.
async fn layers(b: &TestBerthd, bot: &str) -> usize {
    let info = b.sh(bot, "cat /proc/self/mountinfo").await;
    let root = info.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    let lower = root.split(',').find_map(|o| o.strip_prefix("lowerdir=")).unwrap_or("");
    lower.split(':').filter(|l| !l.is_empty()).count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Snapshot layers cannot pile up: every rollback lays the bot on the snapshot it rolls back to, and a
/// snapshot taken after it on that one, so a create/rollback loop deepened the overlay by one layer a
/// round until the kernel refused it (round 485 in the review). Now a chain deeper than eight of the
/// bot's layers is flattened into one, whiteouts, opaque directories, hard links and holes kept; a
/// deleted snapshot's space comes back once nothing is layered on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rollbacks_keep_layers_shallow_and_the_data_whole() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "deep"]);
    let image_layers = layers(&b, "deep").await;
    // Attack: a link to a host file and a fifo in the layers the merge reads (a merge that followed the
    // link would write or read the host's file; one that opened the fifo would hang).
    let host_before = std::fs::read("/etc/hostname").unwrap();
    b.sh(
        "deep",
        "set -e; mkdir -p /data/d; head -c 3000000 /dev/urandom > /data/big; echo a > /data/d/a; ln /data/d/a /data/d/a2
         dd of=/data/sparse bs=1M seek=64 count=0 2>/dev/null; echo tail >> /data/sparse
         rm /etc/nsswitch.conf; rm -rf /usr/sbin; mkdir /usr/sbin; echo mine > /usr/sbin/only
         ln -s /etc/hostname /data/host-file; mkfifo /tmp/blocker; mknod /tmp/zero c 1 5 2>/dev/null || true",
    )
    .await;
    let mut client = data(&b).await;
    let snap = async |c: &mut DataServiceClient<Channel>, name: &str| {
        c.create_snapshot(pb::CreateSnapshotRequest { bot: "deep".into(), name: name.into() }).await.unwrap();
    };
    let rollback = async |c: &mut DataServiceClient<Channel>, name: &str| {
        c.rollback(pb::RollbackRequest { bot: "deep".into(), snapshot: name.into() }).await.unwrap();
    };
    let delete = async |c: &mut DataServiceClient<Channel>, name: &str| {
        c.delete_snapshot(pb::DeleteSnapshotRequest { bot: "deep".into(), name: name.into() }).await.unwrap();
    };

    // A running bot, changed every round: each rollback shows exactly what was snapshotted, through
    // the rounds that flatten.
    let mut deepest = 0;
    for round in 0..12 {
        b.sh(
            "deep",
            &format!(
                "set -e; echo {round} > /data/r{round}; rm -f /data/r$(({round} - 1)); echo {round} >> /data/counter
                 rm -rf /data/o; mkdir /data/o; echo {round} > /data/o/only-{round}
                 echo {round} > /usr/sbin/only-{round}; [ ! -e /usr/sbin/chroot ]"
            ),
        )
        .await;
        let before = b.sh("deep", LAYER_PRINT).await;
        snap(&mut client, &format!("r{round}")).await;
        b.sh("deep", "rm -rf /data/*; echo junk > /etc/junk").await;
        rollback(&mut client, &format!("r{round}")).await;
        assert_eq!(b.sh("deep", LAYER_PRINT).await, before, "round {round}: rollback shows what was snapshotted");
        deepest = deepest.max(layers(&b, "deep").await - image_layers);
    }
    let print = b.sh("deep", LAYER_PRINT).await;
    assert!(print.contains("F /data/./d/a2 644 2 "), "hard link kept: {print}");
    assert!(print.contains("F /data/./sparse 644 1 4 "), "sparse file kept sparse: {print}");
    assert!(!print.contains("nsswitch") && print.contains("/usr/sbin/./only"), "image deletions kept: {print}");
    // /usr/sbin was replaced in the first layer (opaque there) and written in every later one (copied
    // up, so not marked opaque in those): the image's applets must stay hidden through every flattening.
    assert!(!print.contains("/usr/sbin/./chroot"), "the image's /usr/sbin came back: {print}");
    assert!(deepest <= 8, "the bot's own layers reached {deepest}");
    assert!(print.contains("L /data/./host-file -> /etc/hostname"), "the link is kept as a link: {print}");
    assert_eq!(std::fs::read("/etc/hostname").unwrap(), host_before, "the host's file is untouched");
    assert_eq!(b.sh("deep", "[ -p /tmp/blocker ] && echo fifo").await, "fifo\n", "the fifo is kept as a fifo");

    // A thousand rounds on the stopped bot, keeping the last two snapshots (and the first).
    b.cli(&["bot", "stop", "deep"]);
    let pid = b.pid().unwrap();
    let mut rss_100 = 0;
    for round in 0..1000 {
        snap(&mut client, &format!("s{round}")).await;
        rollback(&mut client, &format!("s{round}")).await;
        if round >= 2 {
            delete(&mut client, &format!("s{}", round - 2)).await;
        }
        if round == 100 {
            rss_100 = rss_kib(pid);
        }
    }
    let rss_1000 = rss_kib(pid);
    let flattened = b.log().matches("flattened a snapshot").count();
    assert!(flattened >= 1000 / 9, "only {flattened} flattenings in 1000 rounds");
    eprintln!("berthd RSS: {rss_100} KiB after 100 rounds, {rss_1000} KiB after 1000");
    b.cli(&["bot", "start", "deep"]);
    assert_eq!(b.sh("deep", LAYER_PRINT).await, print, "the data after 1000 rounds");
    assert!(layers(&b, "deep").await - image_layers <= 8);

    // What containerd holds for the bot is bounded: its writable layer, the snapshots kept and the
    // hidden layers they sit on.
    let ls = client.list_snapshots(pb::ListSnapshotsRequest { bot: "deep".into() }).await.unwrap().into_inner();
    let names: Vec<&str> = ls.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 14, "{names:?}");
    let held = b.containerd.ctr(&["snapshots", "ls"]);
    let ours = held.lines().filter(|l| l.contains("berth.deep.")).count();
    eprintln!("containerd holds {ours} snapshots of the bot");
    assert!(ours <= 40, "containerd holds {ours} snapshots of the bot:\n{held}");
    assert!(rss_1000 < rss_100 + 16 * 1024, "berthd grew from {rss_100} to {rss_1000} KiB");

    // Deleting every snapshot frees them all.
    for n in names {
        delete(&mut client, n).await;
    }
    let held = b.containerd.ctr(&["snapshots", "ls"]);
    let ours: Vec<&str> = held.lines().filter(|l| l.contains("berth.deep.")).collect();
    // What is left is the bot's writable layer and the (hidden) layers it sits on.
    assert!(ours.len() <= 1 + 8, "left after deleting every snapshot: {ours:?}");
    assert_eq!(b.sh("deep", LAYER_PRINT).await, print, "the data after deleting every snapshot");
}

/// A 256 MiB sparse file exports as its data only and imports sparse; a fifo is not archived but listed,
/// in the manifest and by the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_keeps_sparse_files_sparse_and_lists_what_it_skips() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "holes"]);
    b.sh(
        "holes",
        "set -e; dd of=/data/sparse bs=1M seek=256 count=0 2>/dev/null; echo tail >> /data/sparse; mkfifo /data/pipe",
    )
    .await;
    let sum = b.sh("holes", "sha256sum < /data/sparse").await;
    let archive = b.dir.path().join("holes.tar");
    let o = b
        .berth(&["data", "export", "holes", "-o", archive.to_str().unwrap(), "--compression", "none"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 1 entries") && stderr.contains("pipe: a fifo"), "{stderr}");
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size < 1 << 20, "a 256 MiB sparse file made a {size}-byte uncompressed archive");

    b.cli(&["bot", "create", "copy"]);
    b.cli(&["data", "import", "copy", archive.to_str().unwrap(), "--replace"]);
    assert_eq!(b.sh("copy", "sha256sum < /data/sparse").await, sum);
    let kib: u64 = b.sh("copy", "du -k /data/sparse | cut -f1").await.trim().parse().unwrap();
    assert!(kib < 1024, "imported dense: {kib} KiB on disk");
    assert_eq!(b.sh("copy", "ls /data").await, "sparse\n", "the fifo is not made on import");
}
