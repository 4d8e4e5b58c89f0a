//! Merging a stack of overlayfs layers into one, as the kernel would show them: what keeps a bot's
//! snapshot chain short (see `bots::rollback`). Layers are given top first; the merge walks them in that
//! order and takes each path from the first layer that has it, so a higher layer's file, whiteout
//! (character device 0/0) or opaque directory hides everything below it, and directories present in
//! several layers are merged unless a higher one is opaque. Whiteouts and opaque markers are kept in
//! the result, which is meant to sit on the same base (the image's layers) the stack sat on.
//!
//! The layers hold what a bot wrote, so they are hostile input: nothing here follows a link (every
//! lookup is an `lstat`, every file opened `O_NOFOLLOW`, every creation exclusive), device nodes are
//! copied as nodes and never opened, and overlay features this merge cannot reproduce (redirected
//! directories, metadata-only copies) make it fail rather than produce a different tree. Files are
//! cloned where the file system can (btrfs, XFS: no data copied) and copied hole by hole elsewhere, so
//! sparse files stay sparse; hard links within a layer stay hard links.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, CWD, FileType, Mode, SeekFrom, Timestamps};

/// overlayfs's marker of a directory that hides the layers below it (value `y`).
const OPAQUE: &str = "trusted.overlay.opaque";
/// The prefix of overlayfs's own attributes; none is copied (they describe the old layers: origins,
/// impurity, opacity, which the merge decides afresh).
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// overlayfs attributes whose meaning lives in other layers: a merge cannot keep them true.
const UNSUPPORTED: [&[u8]; 2] = [b"trusted.overlay.redirect", b"trusted.overlay.metacopy"];

/// What a merge did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    pub entries: u64,
    /// Bytes of regular files in the result (cloned or copied).
    pub file_bytes: u64,
    /// Whether every file was cloned rather than copied.
    pub cloned: bool,
}

/// Merges `layers` (top first) into `target`, an existing empty directory. Stops with
/// [`io::ErrorKind::Interrupted`] once `cancel` is set.
pub fn merge(layers: &[PathBuf], target: &Path, cancel: &AtomicBool) -> io::Result<Merged> {
    let mut m =
        Merge { layers, target, cancel, stats: Merged { cloned: true, ..Merged::default() }, links: HashMap::new() };
    let top = layers.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no layers to merge"))?;
    // The root directory's own owner, mode and attributes are the top layer's.
    let root = fs::symlink_metadata(top)?;
    m.set_attrs(top, &root, target)?;
    // Depth first without recursion (a bot's tree may be thousands deep); a directory's times are set
    // when everything in it is done.
    let mut work = vec![
        Work::Finish { rel: PathBuf::new(), meta: root },
        Work::Dir { rel: PathBuf::new(), from: (0..layers.len()).collect() },
    ];
    while let Some(w) = work.pop() {
        match w {
            Work::Dir { rel, from } => m.merge_dir(&rel, &from, &mut work).map_err(|e| at(&target.join(&rel), e))?,
            Work::Finish { rel, meta } => set_times(&target.join(&rel), &meta)?,
        }
    }
    Ok(m.stats)
}

enum Work {
    /// Merge directory `rel` from the layers (indices, top first) that show it.
    Dir { rel: PathBuf, from: Vec<usize> },
    /// Give directory `rel` its times.
    Finish { rel: PathBuf, meta: Metadata },
}

struct Merge<'a> {
    layers: &'a [PathBuf],
    target: &'a Path,
    cancel: &'a AtomicBool,
    stats: Merged,
    /// Where a file with several names went, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

/// Names the path an error happened at.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Merge<'_> {
    /// Merges directory `rel`, which layers `from` (top first) show, as overlayfs looks it up: each
    /// name is taken from the first of them that has it. A subdirectory continues into the lower
    /// layers that have a directory there, until one of them is opaque or has something else there
    /// (a whiteout, a file); such a cut makes the merged directory opaque, so it hides the base too.
    fn merge_dir(&mut self, rel: &Path, from: &[usize], work: &mut Vec<Work>) -> io::Result<()> {
        let mut names = BTreeSet::new();
        for &i in from {
            for entry in fs::read_dir(self.layers[i].join(rel))? {
                names.insert(entry?.file_name());
            }
        }
        for name in names {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "the merge was stopped"));
            }
            let rel = rel.join(&name);
            let mut found = None;
            for (pos, &i) in from.iter().enumerate() {
                let src = self.layers[i].join(&rel);
                if let Some(meta) = lstat(&src)? {
                    found = Some((pos, src, meta));
                    break;
                }
            }
            let Some((pos, src, meta)) = found else { continue };
            check_attrs(&src)?;
            let dst = self.target.join(&rel);
            if !meta.is_dir() {
                self.copy_entry(&src, &meta, &dst)?;
                continue;
            }
            let mut below = vec![from[pos]];
            let mut cut = is_opaque(&src)?;
            for &k in &from[pos + 1..] {
                if cut {
                    break;
                }
                match lstat(&self.layers[k].join(&rel))? {
                    Some(m) if m.is_dir() => {
                        below.push(k);
                        cut = is_opaque(&self.layers[k].join(&rel))?;
                    }
                    Some(_) => cut = true,
                    None => {}
                }
            }
            self.stats.entries += 1;
            rustix::fs::mkdirat(CWD, &dst, Mode::from_raw_mode(0o700))?;
            if cut {
                rustix::fs::lsetxattr(&dst, OPAQUE, b"y", rustix::fs::XattrFlags::empty())?;
            }
            self.set_attrs(&src, &meta, &dst)?;
            work.push(Work::Finish { rel: rel.clone(), meta });
            work.push(Work::Dir { rel, from: below });
        }
        Ok(())
    }

    /// Creates non-directory `dst` as a copy of `src`: owner, mode, attributes and times included.
    fn copy_entry(&mut self, src: &Path, meta: &Metadata, dst: &Path) -> io::Result<()> {
        self.stats.entries += 1;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(src)?;
            std::os::unix::fs::symlink(target, dst)?;
        } else if ft.is_file() {
            let id = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = self.links.get(&id)
            {
                // Another name of a file this layer already gave: link, and leave its attributes alone.
                return fs::hard_link(first, dst);
            }
            let cloned = copy_file(src, meta, dst)?;
            self.stats.file_bytes += meta.len();
            self.stats.cloned &= cloned;
            if meta.nlink() > 1 {
                self.links.insert(id, dst.to_path_buf());
            }
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            let kind = FileType::from_raw_mode(meta.mode());
            rustix::fs::mknodat(CWD, dst, kind, Mode::from_raw_mode(0o600), meta.rdev())?;
        } else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("{} is of an unknown type", src.display())));
        }
        self.set_attrs(src, meta, dst)?;
        set_times(dst, meta)
    }

    /// Gives `dst` `src`'s owner, attributes (not overlayfs's) and mode.
    fn set_attrs(&self, src: &Path, meta: &Metadata, dst: &Path) -> io::Result<()> {
        let symlink = meta.file_type().is_symlink();
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
        copy_xattrs(src, dst, symlink)?;
        if !symlink {
            // After the owner: chown clears set-id bits.
            rustix::fs::chmodat(CWD, dst, Mode::from_raw_mode(meta.mode() & 0o7777), AtFlags::empty())?;
        }
        Ok(())
    }
}

/// Refuses an entry carrying an overlay attribute that points into other layers.
fn check_attrs(path: &Path) -> io::Result<()> {
    for name in xattr_names(path)? {
        if UNSUPPORTED.iter().any(|u| name.as_bytes() == *u) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} carries {} (overlayfs redirect_dir or metacopy is on): such layers cannot be merged",
                    path.display(),
                    String::from_utf8_lossy(name.as_bytes())
                ),
            ));
        }
    }
    Ok(())
}

fn is_opaque(path: &Path) -> io::Result<bool> {
    let mut value = [0u8; 8];
    match rustix::fs::lgetxattr(path, OPAQUE, &mut value[..]) {
        // `x` (kernel 6.7+) marks a directory holding xattr whiteouts, not an opaque one.
        Ok(n) => Ok(value[..n] == *b"y"),
        Err(rustix::io::Errno::NODATA) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn xattr_names(path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsStr::from_bytes(n).to_os_string())
                    .collect());
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn copy_xattrs(src: &Path, dst: &Path, symlink: bool) -> io::Result<()> {
    for name in xattr_names(src)? {
        let bytes = name.as_bytes();
        if bytes.starts_with(OVERLAY_PREFIX) {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let n = rustix::fs::lgetxattr(src, &name, &mut value[..])?;
        match rustix::fs::lsetxattr(dst, &name, &value[..n], rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // The kernel allows no user attributes on a link; it cannot have had one.
            Err(rustix::io::Errno::PERM) if symlink => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_times(path: &Path, meta: &Metadata) -> io::Result<()> {
    let ts = |s: i64, ns: i64| rustix::fs::Timespec { tv_sec: s, tv_nsec: ns as _ };
    let times = Timestamps {
        last_access: ts(meta.atime(), meta.atime_nsec()),
        last_modification: ts(meta.mtime(), meta.mtime_nsec()),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Copies a regular file's contents into a new file `dst`: cloned when the file system can (`true`),
/// else copied range by range with its holes left holes.
fn copy_file(src: &Path, meta: &Metadata, dst: &Path) -> io::Result<bool> {
    let len = meta.len();
    let from =
        File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(src)?;
    let opened = from.metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return Err(io::Error::other(format!("{} changed while it was merged", src.display())));
    }
    let to = File::options().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(dst)?;
    if len == 0 || rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        return Ok(true);
    }
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(&from, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&from, SeekFrom::Hole(data))?.min(len);
        let mut off = data;
        while off < hole {
            let (mut i, mut o) = (off, off);
            let n = rustix::fs::copy_file_range(&from, Some(&mut i), &to, Some(&mut o), (hole - off) as usize)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while copied", src.display()),
                ));
            }
            off += n as u64;
        }
        at = hole;
    }
    to.set_len(len)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(p: &Path) {
        rustix::fs::mknodat(CWD, p, FileType::CharacterDevice, Mode::from_raw_mode(0o600), 0).unwrap();
    }

    fn opaque(p: &Path) {
        rustix::fs::lsetxattr(p, OPAQUE, b"y", rustix::fs::XattrFlags::empty()).unwrap();
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let what = if m.is_dir() {
                    format!("dir{}", if is_opaque(&p).unwrap() { " opaque" } else { "" })
                } else if m.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if m.file_type().is_char_device() {
                    "whiteout".to_string()
                } else {
                    format!("file {}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
                };
                out.push(format!("{rel}: {what} {:o}", m.mode() & 0o7777));
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    #[test]
    fn higher_layers_win_whiteouts_and_opaque_directories_hide_what_is_below() {
        let t = tempfile::tempdir().unwrap();
        let (top, low, out) = (t.path().join("top"), t.path().join("low"), t.path().join("out"));
        for d in [&top, &low, &out] {
            fs::create_dir(d).unwrap();
        }
        // Lower layer.
        fs::write(low.join("kept"), "low").unwrap();
        fs::write(low.join("replaced"), "low").unwrap();
        fs::write(low.join("deleted"), "low").unwrap();
        fs::create_dir_all(low.join("merged/sub")).unwrap();
        fs::write(low.join("merged/a"), "low").unwrap();
        fs::write(low.join("merged/sub/b"), "low").unwrap();
        fs::create_dir(low.join("hidden")).unwrap();
        fs::write(low.join("hidden/old"), "low").unwrap();
        fs::create_dir(low.join("dir-then-file")).unwrap();
        fs::write(low.join("dir-then-file/x"), "low").unwrap();
        // Top layer.
        fs::write(top.join("replaced"), "top").unwrap();
        whiteout(&top.join("deleted"));
        whiteout(&top.join("only-a-whiteout"));
        fs::create_dir(top.join("merged")).unwrap();
        fs::write(top.join("merged/c"), "top").unwrap();
        fs::create_dir(top.join("hidden")).unwrap();
        opaque(&top.join("hidden"));
        fs::write(top.join("hidden/new"), "top").unwrap();
        fs::write(top.join("dir-then-file"), "top").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", top.join("link")).unwrap();
        fs::set_permissions(top.join("merged"), std::os::unix::fs::PermissionsExt::from_mode(0o751)).unwrap();

        merge(&[top.clone(), low.clone()], &out, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            tree(&out),
            vec![
                "deleted: whiteout 600",
                "dir-then-file: file top 644",
                "hidden: dir opaque 755",
                "hidden/new: file top 644",
                "kept: file low 644",
                "link: link /etc/shadow 777",
                "merged: dir 751",
                "merged/a: file low 644",
                "merged/c: file top 644",
                "merged/sub: dir 755",
                "merged/sub/b: file low 644",
                "only-a-whiteout: whiteout 600",
                "replaced: file top 644",
            ]
        );
    }

    #[test]
    fn hard_links_stay_links_sparse_files_stay_sparse_and_times_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let (layer, out) = (t.path().join("layer"), t.path().join("out"));
        fs::create_dir_all(layer.join("d")).unwrap();
        fs::create_dir(&out).unwrap();
        fs::write(layer.join("a"), "shared").unwrap();
        fs::hard_link(layer.join("a"), layer.join("d/b")).unwrap();
        let sparse = File::create(layer.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"end", (64 << 20) - 3).unwrap();
        drop(sparse);
        let old = Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 5 },
            last_modification: rustix::fs::Timespec { tv_sec: 2_000_000, tv_nsec: 7 },
        };
        rustix::fs::utimensat(CWD, layer.join("d"), &old, AtFlags::empty()).unwrap();

        let merged = merge(std::slice::from_ref(&layer), &out, &AtomicBool::new(false)).unwrap();
        assert_eq!(merged.entries, 4, "{merged:?}");
        let (a, b) = (fs::metadata(out.join("a")).unwrap(), fs::metadata(out.join("d/b")).unwrap());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "the two names are one file");
        let s = fs::metadata(out.join("sparse")).unwrap();
        assert_eq!(s.len(), 64 << 20);
        assert!(s.blocks() * 512 < 1 << 20, "the copy is dense: {} blocks", s.blocks());
        assert_eq!(&fs::read(out.join("sparse")).unwrap()[(64 << 20) - 3..], b"end");
        let d = fs::metadata(out.join("d")).unwrap();
        assert_eq!((d.mtime(), d.mtime_nsec()), (2_000_000, 7), "a directory keeps its time after its entries");
    }

    #[test]
    fn redirected_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (layer, out) = (t.path().join("layer"), t.path().join("out"));
        fs::create_dir_all(layer.join("moved")).unwrap();
        fs::create_dir(&out).unwrap();
        rustix::fs::lsetxattr(
            layer.join("moved"),
            "trusted.overlay.redirect",
            b"/old",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let e = merge(&[layer], &out, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    }

    /// A directory copied up into a higher layer loses its opaque mark (overlayfs copies none of its
    /// own attributes), yet the kernel still stops at the lower, opaque copy: so must the merge. The
    /// same for a plain directory over a lower whiteout or file.
    #[test]
    fn a_copied_up_directory_over_an_opaque_one_stays_opaque_and_the_root_keeps_its_mode() {
        let t = tempfile::tempdir().unwrap();
        let (top, mid, low, out) =
            (t.path().join("top"), t.path().join("mid"), t.path().join("low"), t.path().join("out"));
        for d in [&top, &mid, &low, &out] {
            fs::create_dir(d).unwrap();
        }
        for d in [&top, &mid, &low] {
            fs::create_dir(d.join("d")).unwrap();
        }
        fs::write(low.join("d/old"), "low").unwrap();
        opaque(&mid.join("d"));
        fs::write(mid.join("d/new"), "mid").unwrap();
        fs::write(top.join("d/newer"), "top").unwrap();
        whiteout(&low.join("w"));
        fs::create_dir(top.join("w")).unwrap();
        fs::write(top.join("w/x"), "top").unwrap();
        fs::write(low.join("f"), "low").unwrap();
        fs::create_dir(mid.join("f")).unwrap();
        fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();

        merge(&[top.clone(), mid.clone(), low.clone()], &out, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            tree(&out),
            vec![
                "d: dir opaque 755",
                "d/new: file mid 644",
                "d/newer: file top 644",
                "f: dir opaque 755",
                "w: dir opaque 755",
                "w/x: file top 644",
            ]
        );
        assert_eq!(fs::metadata(&out).unwrap().mode() & 0o7777, 0o700, "the root's mode is the top layer's");
    }

    #[test]
    fn a_tree_deeper_than_any_stack_merges() {
        let t = tempfile::tempdir().unwrap();
        let (layer, out) = (t.path().join("layer"), t.path().join("out"));
        fs::create_dir(&out).unwrap();
        let mut deep = layer.clone();
        for _ in 0..1500 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), "bottom").unwrap();
        let cancel = AtomicBool::new(false);
        // On a thread with a small stack, as recursion would need far more.
        let (l, o) = (layer.clone(), out.clone());
        let merged = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || merge(&[l], &o, &cancel))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(merged.entries, 1501);
        assert_eq!(fs::read(out.join(deep.strip_prefix(&layer).unwrap()).join("f")).unwrap(), b"bottom");
        let stopped = AtomicBool::new(true);
        let e = merge(&[layer], &t.path().join("out"), &stopped).unwrap_err();
        assert!(matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::AlreadyExists), "{e}");
    }
}
