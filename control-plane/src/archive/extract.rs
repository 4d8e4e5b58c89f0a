//! Extracting a data archive into a directory berthd owns (a staging snapshot mounted on the host, which
//! no container uses yet). Every archive is hostile until proven otherwise: paths must be relative and
//! stay under `data/`; symbolic links may not climb out of the root with `..`; nothing is ever written
//! through a symbolic link (every directory is opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); hard
//! links may only point at files this archive made; device nodes and fifos are refused; the expanded size
//! is capped. Files are hashed as they are written and checked against the manifest at the end. A caller
//! that gets an error discards the staging directory, so a refused archive changes nothing.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::manifest::{Entry, Kind, Manifest};
use super::{ArchiveError, DATA_DIR, MANIFEST, Summary, io};

/// How to apply an archive.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Largest total of expanded bytes accepted.
    pub max_bytes: u64,
    /// Empty the data directory first (otherwise merge: the archive's entries replace same-named ones).
    pub replace: bool,
}

/// Caps how much a decompressor may produce.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(std::io::Error::other("expansion limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts compressed bytes read (for progress).
struct Counting<'a, R> {
    inner: R,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Extracts `input` into `<mount_root>/data`; with no `mount_root`, only checks it (every rule that does
/// not depend on the data it would be applied to, and the manifest), writing nothing.
pub fn extract<R: Read>(
    input: R,
    mount_root: Option<&Path>,
    opts: Options,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, ArchiveError> {
    let root = mount_root.map(|m| open_data_root(m, opts.replace)).transpose()?;
    let mut buffered = BufReader::with_capacity(256 << 10, Counting { inner: input, progress });
    let magic = buffered.fill_buf().map_err(io("read the archive"))?.to_vec();
    let exceeded = Rc::new(Cell::new(false));
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(buffered).map_err(io("start zstd"))?)
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let limited = Limited { inner: decoded, left: opts.max_bytes, exceeded: exceeded.clone() };
    let result = extract_tar(limited, root.as_ref());
    match result {
        Err(_) if exceeded.get() => Err(ArchiveError::TooLarge { limit: opts.max_bytes }),
        r => r,
    }
}

/// Opens (making, or in replace mode emptying) the data root, never through a symbolic link.
fn open_data_root(mount_root: &Path, replace: bool) -> Result<OwnedFd, ArchiveError> {
    let top = rustix::fs::open(mount_root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| ArchiveError::Io { op: format!("open {}", mount_root.display()), source: e.into() })?;
    match rustix::fs::statat(&top, DATA_DIR, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => {}
        Err(e) => return Err(ArchiveError::Io { op: "inspect /data".into(), source: e.into() }),
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory => {}
        Ok(_) if replace => {
            rustix::fs::unlinkat(&top, DATA_DIR, AtFlags::empty())
                .map_err(|e| ArchiveError::Io { op: "remove the non-directory /data".into(), source: e.into() })?;
        }
        Ok(_) => {
            return Err(ArchiveError::Hostile {
                entry: "/data".into(),
                reason: "the bot's /data is not a directory; import with replace to recreate it".into(),
            });
        }
    }
    match rustix::fs::mkdirat(&top, DATA_DIR, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(ArchiveError::Io { op: "create /data".into(), source: e.into() }),
    }
    let root = rustix::fs::openat2(
        &top,
        DATA_DIR,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(|e| ArchiveError::Io { op: "open /data".into(), source: e.into() })?;
    if replace {
        empty_dir(&root)?;
    }
    Ok(root)
}

/// Removes everything inside `dir` (links are removed, never followed).
fn empty_dir(dir: &OwnedFd) -> Result<(), ArchiveError> {
    let fail = |e: Errno| ArchiveError::Io { op: "empty /data".into(), source: e.into() };
    let mut names = Vec::new();
    let listing = rustix::fs::Dir::read_from(dir).map_err(fail)?;
    for entry in listing {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(entry.file_name().to_owned());
        }
    }
    for name in names {
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            let sub = rustix::fs::openat2(
                dir,
                &name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(fail)?;
            empty_dir(&sub)?;
            rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR).map_err(fail)?;
        } else {
            rustix::fs::unlinkat(dir, &name, AtFlags::empty()).map_err(fail)?;
        }
    }
    Ok(())
}

/// Where an archive path points.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Manifest,
    /// Components under the data root (empty = the root itself).
    Data(Vec<String>),
}

/// Validates an archive path: relative, no `..`, under `data/` (or the manifest).
fn place(raw: &[u8]) -> Result<Place, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    let mut comps = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("`..` is not allowed in paths".into()),
            c => comps.push(c.to_string()),
        }
    }
    match comps.first().map(String::as_str) {
        Some(MANIFEST) if comps.len() == 1 => Ok(Place::Manifest),
        Some(DATA_DIR) => Ok(Place::Data(comps[1..].to_vec())),
        _ => Err(format!("entries must be under `{DATA_DIR}/`")),
    }
}

/// Whether a relative symlink target climbs above the data root from the link's directory.
fn climbs_out(dir_depth: usize, target: &str) -> bool {
    if target.starts_with('/') {
        // Resolved inside the bot against its own root; berthd never follows links on the host.
        return false;
    }
    let mut depth = dir_depth as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn extract_tar<R: Read>(input: R, root: Option<&OwnedFd>) -> Result<Summary, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    let mut summary = Summary::default();
    let mut manifest: Option<Manifest> = None;
    let mut made: HashMap<String, Entry> = HashMap::new();
    let mut files: HashSet<String> = HashSet::new();
    // Symbolic links this archive made: nothing may be written through them.
    let mut links: HashSet<String> = HashSet::new();
    let entries = archive.entries().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(format!("reading an entry: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let hostile = |reason: String| ArchiveError::Hostile { entry: shown.clone(), reason };
        let comps = match place(&raw).map_err(&hostile)? {
            Place::Manifest => {
                let mut json = Vec::new();
                entry
                    .read_to_end(&mut json)
                    .map_err(|e| ArchiveError::Corrupt(format!("reading the manifest: {e}")))?;
                manifest = Some(
                    serde_json::from_slice(&json).map_err(|e| ArchiveError::Corrupt(format!("the manifest: {e}")))?,
                );
                continue;
            }
            Place::Data(c) => c,
        };
        let h = entry.header();
        let mode = h.mode().map_err(|e| ArchiveError::Corrupt(format!("{shown}: {e}")))? & 0o7777;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        let Some((name, parents)) = comps.split_last() else {
            // The data root itself: only its mode applies.
            if let Some(root) = root {
                rustix::fs::fchmod(root, Mode::from_raw_mode(mode))
                    .map_err(|e| ArchiveError::Io { op: "chmod /data".into(), source: e.into() })?;
            }
            continue;
        };
        let rel = comps.join("/");
        if let Some(i) = (1..comps.len()).find(|&i| links.contains(&comps[..i].join("/"))) {
            return Err(hostile(format!("it would be written through the symbolic link `{}`", comps[..i].join("/"))));
        }
        links.remove(&rel);
        files.remove(&rel);
        let Some(root) = root else {
            // Checking only: what the archive says, without writing it.
            let record =
                check_only(&mut entry, &rel, parents.len(), kind, (mode, uid, gid), &files).map_err(|e| match e {
                    ArchiveError::Hostile { reason, .. } => hostile(reason),
                    e => e,
                })?;
            match record.kind {
                Kind::File => {
                    summary.bytes += record.size;
                    files.insert(rel.clone());
                }
                Kind::Symlink => {
                    links.insert(rel.clone());
                }
                _ => {}
            }
            summary.entries += 1;
            made.insert(rel, record);
            continue;
        };
        let parent = open_dirs(root, parents).map_err(&hostile)?;
        let mut record = Entry {
            path: rel.clone(),
            kind: Kind::Dir,
            mode,
            uid,
            gid,
            size: 0,
            sha256: String::new(),
            target: String::new(),
        };
        let ctx = |op: &str| {
            let op = format!("{op} {rel}");
            move |e: Errno| ArchiveError::Io { op, source: e.into() }
        };
        match kind {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(mode)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(ctx("inspect"))?;
                        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                            rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty()).map_err(ctx("replace"))?;
                            rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(mode))
                                .map_err(ctx("create"))?;
                        }
                    }
                    Err(e) => return Err(ctx("create")(e)),
                }
                let d = rustix::fs::openat2(
                    &parent,
                    name.as_str(),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
                .map_err(ctx("open"))?;
                rustix::fs::fchmod(&d, Mode::from_raw_mode(mode)).map_err(ctx("chmod"))?;
                chown(&d, uid, gid).map_err(ctx("chown"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&parent, name).map_err(&hostile)?;
                let f = rustix::fs::openat(
                    &parent,
                    name.as_str(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(ctx("create"))?;
                let mut file = std::fs::File::from(f);
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 128 << 10];
                let mut size = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(|e| ArchiveError::Corrupt(format!("{shown}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    file.write_all(&buf[..n]).map_err(io(format!("write {rel}")))?;
                    size += n as u64;
                }
                chown(file.as_fd(), uid, gid).map_err(ctx("chown"))?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(ctx("chmod"))?;
                let t = rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
                rustix::fs::futimens(&file, &Timestamps { last_access: t, last_modification: t })
                    .map_err(ctx("set times of"))?;
                record.kind = Kind::File;
                record.size = size;
                record.sha256 = hex::encode(hash.finalize());
                summary.bytes += size;
                files.insert(rel.clone());
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target = String::from_utf8(target).map_err(|_| hostile("the link target is not UTF-8".into()))?;
                if target.is_empty() || climbs_out(parents.len(), &target) {
                    return Err(hostile(format!("the symbolic link to `{target}` points outside the data root")));
                }
                clear(&parent, name).map_err(&hostile)?;
                rustix::fs::symlinkat(target.as_str(), &parent, name.as_str()).map_err(ctx("create link"))?;
                let (u, g) = (Some(rustix::fs::Uid::from_raw(uid as u32)), Some(rustix::fs::Gid::from_raw(gid as u32)));
                rustix::fs::chownat(&parent, name.as_str(), u, g, AtFlags::SYMLINK_NOFOLLOW).map_err(ctx("chown"))?;
                record.kind = Kind::Symlink;
                record.mode = 0o777;
                record.target = target;
                links.insert(rel.clone());
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let tcomps = match place(&target) {
                    Ok(Place::Data(c)) if !c.is_empty() => c,
                    _ => return Err(hostile("the hard link points outside the data root".into())),
                };
                let tpath = tcomps.join("/");
                if !files.contains(&tpath) {
                    return Err(hostile(format!(
                        "the hard link points at `{tpath}`, which this archive did not create"
                    )));
                }
                let (tname, tparents) = tcomps.split_last().ok_or_else(|| hostile("empty hard link target".into()))?;
                let tdir = open_dirs(root, tparents).map_err(&hostile)?;
                clear(&parent, name).map_err(&hostile)?;
                rustix::fs::linkat(&tdir, tname.as_str(), &parent, name.as_str(), AtFlags::empty())
                    .map_err(ctx("link"))?;
                record.kind = Kind::Hardlink;
                record.target = tpath;
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(hostile("device nodes are not allowed".into())),
            tar::EntryType::Fifo => return Err(hostile("fifos are not allowed".into())),
            other => return Err(hostile(format!("entries of type {other:?} are not supported"))),
        }
        summary.entries += 1;
        made.insert(rel, record);
    }
    if let Some(m) = manifest {
        verify(&m, &made)?;
        summary.verified = true;
        summary.skipped = m.skipped;
    }
    Ok(summary)
}

/// The record of one entry, checked but not written (see [`extract`] without a mount root).
fn check_only<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    rel: &str,
    depth: usize,
    kind: tar::EntryType,
    (mode, uid, gid): (u32, u64, u64),
    files: &HashSet<String>,
) -> Result<Entry, ArchiveError> {
    let hostile = |reason: String| ArchiveError::Hostile { entry: rel.to_string(), reason };
    let mut record = Entry {
        path: rel.to_string(),
        kind: Kind::Dir,
        mode,
        uid,
        gid,
        size: 0,
        sha256: String::new(),
        target: String::new(),
    };
    match kind {
        tar::EntryType::Directory => {}
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 128 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(|e| ArchiveError::Corrupt(format!("{rel}: {e}")))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                record.size += n as u64;
            }
            record.kind = Kind::File;
            record.sha256 = hex::encode(hash.finalize());
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            let target = String::from_utf8(target).map_err(|_| hostile("the link target is not UTF-8".into()))?;
            if target.is_empty() || climbs_out(depth, &target) {
                return Err(hostile(format!("the symbolic link to `{target}` points outside the data root")));
            }
            record.kind = Kind::Symlink;
            record.mode = 0o777;
            record.target = target;
        }
        tar::EntryType::Link => {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            let tpath = match place(&target) {
                Ok(Place::Data(c)) if !c.is_empty() => c.join("/"),
                _ => return Err(hostile("the hard link points outside the data root".into())),
            };
            if !files.contains(&tpath) {
                return Err(hostile(format!("the hard link points at `{tpath}`, which this archive did not create")));
            }
            record.kind = Kind::Hardlink;
            record.target = tpath;
        }
        tar::EntryType::Char | tar::EntryType::Block => return Err(hostile("device nodes are not allowed".into())),
        tar::EntryType::Fifo => return Err(hostile("fifos are not allowed".into())),
        other => return Err(hostile(format!("entries of type {other:?} are not supported"))),
    }
    Ok(record)
}

fn chown(fd: impl AsFd, uid: u64, gid: u64) -> Result<(), Errno> {
    rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid as u32)), Some(rustix::fs::Gid::from_raw(gid as u32)))
}

/// Opens the directory `comps` under `root`, creating missing ones, never crossing a symbolic link.
fn open_dirs(root: &OwnedFd, comps: &[String]) -> Result<OwnedFd, String> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut cur =
        rustix::fs::openat2(root, ".", flags, Mode::empty(), RESOLVE).map_err(|e| format!("open /data: {e}"))?;
    for (i, c) in comps.iter().enumerate() {
        let next = match rustix::fs::openat2(&cur, c.as_str(), flags, Mode::empty(), RESOLVE) {
            Err(Errno::NOENT) => {
                rustix::fs::mkdirat(&cur, c.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(|e| format!("create {c}: {e}"))?;
                rustix::fs::openat2(&cur, c.as_str(), flags, Mode::empty(), RESOLVE)
            }
            r => r,
        };
        cur = next.map_err(|e| match e {
            Errno::LOOP | Errno::XDEV => {
                format!("it would be written through the symbolic link `{}`", comps[..=i].join("/"))
            }
            Errno::NOTDIR => format!("`{}` is not a directory", comps[..=i].join("/")),
            e => format!("open {}: {e}", comps[..=i].join("/")),
        })?;
    }
    Ok(cur)
}

/// Removes a non-directory at `name` so an entry can take its place; a directory in the way is an error.
fn clear(parent: &OwnedFd, name: &str) -> Result<(), String> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => Err("a directory is in its place".into()),
        Err(e) => Err(format!("cannot replace it: {e}")),
    }
}

/// Checks what was extracted against the manifest, both ways.
fn verify(m: &Manifest, made: &HashMap<String, Entry>) -> Result<(), ArchiveError> {
    if m.format != super::manifest::FORMAT {
        return Err(ArchiveError::Corrupt(format!("unknown manifest format `{}`", m.format)));
    }
    let mut problems = Vec::new();
    for e in &m.entries {
        match made.get(&e.path) {
            None => problems.push(format!("`{}` is in the manifest but not in the archive", e.path)),
            Some(got)
                if got.kind != e.kind || got.size != e.size || got.sha256 != e.sha256 || got.target != e.target =>
            {
                problems.push(format!("`{}` does not match the manifest", e.path))
            }
            Some(_) => {}
        }
    }
    let listed: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    problems
        .extend(made.keys().filter(|p| !listed.contains(p.as_str())).map(|p| format!("`{p}` is not in the manifest")));
    if problems.is_empty() {
        Ok(())
    } else {
        let n = problems.len();
        problems.truncate(5);
        Err(ArchiveError::Corrupt(format!("{n} entries disagree with the manifest: {}", problems.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(place(b"manifest.json"), Ok(Place::Manifest));
        assert_eq!(place(b"data/a/./b"), Ok(Place::Data(vec!["a".into(), "b".into()])));
        assert_eq!(place(b"data/"), Ok(Place::Data(vec![])));
        assert!(place(b"/etc/passwd").is_err());
        assert!(place(b"data/../x").is_err());
        assert!(place(b"other/x").is_err());
    }

    #[test]
    fn relative_links_may_not_climb_out() {
        assert!(!climbs_out(0, "a/b"));
        assert!(!climbs_out(1, "../x"));
        assert!(climbs_out(1, "../../x"));
        assert!(climbs_out(0, ".."));
        assert!(!climbs_out(0, "/usr/bin/python3"));
        assert!(climbs_out(2, "a/../../../../etc"));
    }
}
