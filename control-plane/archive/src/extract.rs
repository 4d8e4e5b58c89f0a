//! Extracting a data archive into a directory berthd owns (a staging snapshot mounted on the host, which
//! no container uses yet). Every archive is hostile until proven otherwise: paths must be relative and
//! stay under `data/`; symbolic links may not climb out of the root with `..`; nothing is ever written
//! through a symbolic link (every directory is opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); hard
//! links may only point at files this archive made; device nodes and fifos are refused; the expanded size
//! is capped. Files are hashed as they are written and checked against the manifest at the end. A caller
//! that gets an error discards the staging directory, so a refused archive changes nothing.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, Write};
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
    let result = extract_tar(limited, root.as_ref(), opts.max_bytes);
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

/// What a data entry asks for, once validated.
enum Plan {
    Dir,
    File,
    Symlink(String),
    /// A hard link to a file this archive made (its components under the root).
    Hardlink(Vec<String>),
}

/// Validates an entry's type and link target: the rules that hold whatever it is applied to.
fn plan<R: Read>(entry: &tar::Entry<'_, R>, depth: usize, files: &HashSet<String>) -> Result<Plan, String> {
    let target = || entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
    match entry.header().entry_type() {
        tar::EntryType::Directory => Ok(Plan::Dir),
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => Ok(Plan::File),
        tar::EntryType::Symlink => {
            let t = String::from_utf8(target()).map_err(|_| "the link target is not UTF-8".to_string())?;
            if t.is_empty() || climbs_out(depth, &t) {
                return Err(format!("the symbolic link to `{t}` points outside the data root"));
            }
            Ok(Plan::Symlink(t))
        }
        tar::EntryType::Link => {
            let comps = match place(&target()) {
                Ok(Place::Data(c)) if !c.is_empty() => c,
                _ => return Err("the hard link points outside the data root".into()),
            };
            if !files.contains(&comps.join("/")) {
                return Err(format!(
                    "the hard link points at `{}`, which this archive did not create",
                    comps.join("/")
                ));
            }
            Ok(Plan::Hardlink(comps))
        }
        tar::EntryType::Char | tar::EntryType::Block => Err("device nodes are not allowed".into()),
        tar::EntryType::Fifo => Err("fifos are not allowed".into()),
        other => Err(format!("entries of type {other:?} are not supported")),
    }
}

/// Reads an entry's content to its end, hashing it and writing it to `out` if given.
fn copy_hashing<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    mut out: Option<&mut std::fs::File>,
    rel: &str,
) -> Result<(u64, String), ArchiveError> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    let mut size = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(|e| ArchiveError::Corrupt(format!("{rel}: {e}")))?;
        if n == 0 {
            if let Some(f) = out {
                f.set_len(size).map_err(io(format!("write {rel}")))?;
            }
            return Ok((size, hex::encode(hash.finalize())));
        }
        hash.update(&buf[..n]);
        if let Some(f) = out.as_deref_mut() {
            // Zeros become a hole: a sparse file (or any run of zeros) stays sparse.
            if buf[..n].iter().all(|b| *b == 0) {
                f.seek(std::io::SeekFrom::Current(n as i64)).map_err(io(format!("write {rel}")))?;
            } else {
                f.write_all(&buf[..n]).map_err(io(format!("write {rel}")))?;
            }
        }
        size += n as u64;
    }
}

fn extract_tar<R: Read>(input: R, root: Option<&OwnedFd>, max_bytes: u64) -> Result<Summary, ArchiveError> {
    // Files' lengths, holes included: a sparse entry's holes cost nothing to store but are hashed.
    let mut left = Budget { left: max_bytes, limit: max_bytes };
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
                manifest = Some(read_manifest(&mut entry)?);
                continue;
            }
            Place::Data(c) => c,
        };
        let h = entry.header();
        let mode = h.mode().map_err(|e| ArchiveError::Corrupt(format!("{shown}: {e}")))? & 0o7777;
        let (uid, gid, mtime) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0), h.mtime().unwrap_or(0));
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
        let plan = plan(&entry, parents.len(), &files).map_err(&hostile)?;
        links.remove(&rel);
        files.remove(&rel);
        // With a root, where the entry goes: its parent directory, never reached through a link.
        let parent = root.map(|r| open_dirs(r, parents)).transpose().map_err(&hostile)?;
        let at = Dest { root, parent: parent.as_ref(), name, rel: &rel, shown: &shown, mode, uid, gid, mtime };
        let record = at.write(plan, &mut entry, &mut left)?;
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
    }
    if let Some(m) = manifest {
        verify(&m, &made)?;
        summary.verified = true;
        summary.skipped = m.skipped;
    }
    Ok(summary)
}

fn read_manifest(entry: &mut impl Read) -> Result<Manifest, ArchiveError> {
    let mut json = Vec::new();
    entry.read_to_end(&mut json).map_err(|e| ArchiveError::Corrupt(format!("reading the manifest: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| ArchiveError::Corrupt(format!("the manifest: {e}")))
}

/// Where one entry goes (nothing is written without a root: a check only) and what it carries.
struct Dest<'a> {
    root: Option<&'a OwnedFd>,
    /// Its parent directory, opened without following a link.
    parent: Option<&'a OwnedFd>,
    name: &'a str,
    rel: &'a str,
    /// Its path as the archive spells it, for refusals.
    shown: &'a str,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// What is left of an import's limit on files' lengths (holes included).
struct Budget {
    left: u64,
    limit: u64,
}

impl Dest<'_> {
    /// Makes one entry as planned and returns its manifest record.
    fn write<R: Read>(
        &self,
        plan: Plan,
        entry: &mut tar::Entry<'_, R>,
        budget: &mut Budget,
    ) -> Result<Entry, ArchiveError> {
        let mut record = Entry {
            path: self.rel.to_string(),
            kind: Kind::Dir,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: 0,
            sha256: String::new(),
            target: String::new(),
        };
        match plan {
            Plan::Dir => self.dir()?,
            Plan::File => {
                budget.left =
                    budget.left.checked_sub(entry.size()).ok_or(ArchiveError::TooLarge { limit: budget.limit })?;
                let (size, sha256) = self.file(entry)?;
                record.kind = Kind::File;
                record.size = size;
                record.sha256 = sha256;
            }
            Plan::Symlink(target) => {
                self.symlink(&target)?;
                record.kind = Kind::Symlink;
                record.mode = 0o777;
                record.target = target;
            }
            Plan::Hardlink(tcomps) => {
                self.hardlink(&tcomps)?;
                record.kind = Kind::Hardlink;
                record.target = tcomps.join("/");
            }
        }
        Ok(record)
    }

    fn io(&self, op: &str) -> impl FnOnce(Errno) -> ArchiveError + use<> {
        let op = format!("{op} {}", self.rel);
        move |e: Errno| ArchiveError::Io { op, source: e.into() }
    }

    fn hostile(&self, reason: String) -> ArchiveError {
        ArchiveError::Hostile { entry: self.shown.to_string(), reason }
    }

    fn dir(&self) -> Result<(), ArchiveError> {
        let Some(parent) = self.parent else { return Ok(()) };
        make_dir(parent, self.name, self.mode).map_err(self.io("create"))?;
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let d = rustix::fs::openat2(parent, self.name, flags, Mode::empty(), RESOLVE).map_err(self.io("open"))?;
        rustix::fs::fchmod(&d, Mode::from_raw_mode(self.mode)).map_err(self.io("chmod"))?;
        chown(&d, self.uid, self.gid).map_err(self.io("chown"))
    }

    /// Writes (or, without a root, only reads) the file's content; its size and sha256.
    fn file<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<(u64, String), ArchiveError> {
        let mut file = match self.parent {
            Some(parent) => {
                clear(parent, self.name).map_err(|r| self.hostile(r))?;
                let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let f = rustix::fs::openat(parent, self.name, flags, Mode::from_raw_mode(0o600))
                    .map_err(self.io("create"))?;
                Some(std::fs::File::from(f))
            }
            None => None,
        };
        let hashed = copy_hashing(entry, file.as_mut(), self.rel)?;
        if let Some(file) = file {
            chown(file.as_fd(), self.uid, self.gid).map_err(self.io("chown"))?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(self.mode)).map_err(self.io("chmod"))?;
            let t = rustix::fs::Timespec { tv_sec: self.mtime as i64, tv_nsec: 0 };
            rustix::fs::futimens(&file, &Timestamps { last_access: t, last_modification: t })
                .map_err(self.io("set times of"))?;
        }
        Ok(hashed)
    }

    fn symlink(&self, target: &str) -> Result<(), ArchiveError> {
        let Some(parent) = self.parent else { return Ok(()) };
        clear(parent, self.name).map_err(|r| self.hostile(r))?;
        rustix::fs::symlinkat(target, parent, self.name).map_err(self.io("create link"))?;
        let (u, g) =
            (Some(rustix::fs::Uid::from_raw(self.uid as u32)), Some(rustix::fs::Gid::from_raw(self.gid as u32)));
        rustix::fs::chownat(parent, self.name, u, g, AtFlags::SYMLINK_NOFOLLOW).map_err(self.io("chown"))
    }

    fn hardlink(&self, target: &[String]) -> Result<(), ArchiveError> {
        let (Some(root), Some(parent)) = (self.root, self.parent) else { return Ok(()) };
        let (tname, tparents) = target.split_last().ok_or_else(|| self.hostile("empty hard link target".into()))?;
        let tdir = open_dirs(root, tparents).map_err(|r| self.hostile(r))?;
        clear(parent, self.name).map_err(|r| self.hostile(r))?;
        rustix::fs::linkat(&tdir, tname.as_str(), parent, self.name, AtFlags::empty()).map_err(self.io("link"))
    }
}

/// Makes directory `name`, replacing a non-directory in its place.
fn make_dir(parent: &OwnedFd, name: &str, mode: u32) -> Result<(), Errno> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
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
