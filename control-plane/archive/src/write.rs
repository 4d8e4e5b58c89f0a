//! Writing a data archive from a directory that does not change while it is read (a mounted snapshot).
//! Symbolic links are archived as links, never followed; hard links are archived once and linked; files
//! with holes are archived as GNU sparse entries (their data only), so a sparse file stays sparse; what
//! an archive cannot hold (sockets, fifos, device nodes) is listed in the manifest's `skipped`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{self, Entry, Kind, Manifest};
use super::{ArchiveError, Compression, DATA_DIR, MANIFEST, Summary, io};

/// Reads `inner`, hashing and counting what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Writes the archive of `root` (which must be a real directory, not a link) to `out`.
pub fn write_archive<W: Write>(
    root: &Path,
    bot: &str,
    compression: Compression,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, ArchiveError> {
    let meta = match std::fs::symlink_metadata(root) {
        // A bot without /data has nothing to archive: an archive with only its manifest.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        r => Some(r.map_err(io(format!("read {}", root.display())))?),
    };
    if meta.as_ref().is_some_and(|m| !m.is_dir()) {
        return Err(ArchiveError::Hostile {
            entry: "/data".into(),
            reason: "it is not a directory (a symbolic link or a file); berth does not follow it".into(),
        });
    }
    match compression {
        Compression::Zstd => {
            let enc = zstd::Encoder::new(out, 3).map_err(io("start zstd"))?;
            let enc = write_tar(meta.is_some().then_some(root), bot, enc, progress)?;
            enc.0.finish().map_err(io("finish zstd"))?;
            Ok(enc.1)
        }
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            let enc = write_tar(meta.is_some().then_some(root), bot, enc, progress)?;
            enc.0.finish().map_err(io("finish gzip"))?;
            Ok(enc.1)
        }
        Compression::None => write_tar(meta.is_some().then_some(root), bot, out, progress).map(|(_, s)| s),
    }
}

fn write_tar<W: Write>(
    root: Option<&Path>,
    bot: &str,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, Summary), ArchiveError> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut w = Writer { tar, entries: Vec::new(), summary: Summary::default(), linked: HashMap::new(), progress };
    let mut stack: Vec<PathBuf> = Vec::new();
    let root = match root {
        Some(r) => {
            stack.push(PathBuf::new());
            r
        }
        None => Path::new("/nonexistent"),
    };
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(format!("list {}", dir.display())))?
            .collect::<Result<_, _>>()
            .map_err(io(format!("list {}", dir.display())))?;
        children.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for child in children {
            let rel = rel.join(child.file_name());
            if w.add(root, &rel)? {
                subdirs.push(rel);
            }
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    let Writer { mut tar, entries, mut summary, .. } = w;
    append_manifest(&mut tar, bot, entries, summary.skipped.clone())?;
    let out = tar.into_inner().map_err(io("finish the archive"))?;
    summary.verified = true;
    Ok((out, summary))
}

/// The archive being written: the tar stream, the manifest's entries so far, the summary, and the
/// files with several links already archived ((dev, inode) → the first path).
struct Writer<'p, W: Write> {
    tar: tar::Builder<W>,
    entries: Vec<Entry>,
    summary: Summary,
    linked: HashMap<(u64, u64), String>,
    progress: &'p mut dyn FnMut(u64),
}

impl<W: Write> Writer<'_, W> {
    /// Archives `root/rel` (never following it) and records it in the manifest; fifos, sockets and
    /// devices are skipped and named in the summary. Returns whether it is a directory to descend into.
    fn add(&mut self, root: &Path, rel: &Path) -> Result<bool, ArchiveError> {
        let path = root.join(rel);
        let name = rel.to_string_lossy().into_owned();
        let in_tar = format!("{DATA_DIR}/{name}");
        let m = std::fs::symlink_metadata(&path).map_err(io(format!("read {}", path.display())))?;
        let ft = m.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        let mut entry = Entry {
            path: name.clone(),
            kind: Kind::Dir,
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            size: 0,
            sha256: String::new(),
            target: String::new(),
        };
        let add = |e: std::io::Error| ArchiveError::Io { op: format!("archive {name}"), source: e };
        let tar = &mut self.tar;
        if ft.is_dir() {
            tar.append_data(&mut header, &in_tar, std::io::empty()).map_err(add)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(format!("read link {}", path.display())))?;
            header.set_size(0);
            tar.append_link(&mut header, &in_tar, &target).map_err(add)?;
            entry.kind = Kind::Symlink;
            entry.target = target.to_string_lossy().into_owned();
        } else if ft.is_file() {
            if m.nlink() > 1
                && let Some(first) = self.linked.get(&(m.dev(), m.ino()))
            {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                tar.append_link(&mut header, &in_tar, format!("{DATA_DIR}/{first}")).map_err(add)?;
                entry.kind = Kind::Hardlink;
                entry.target = first.clone();
            } else {
                if m.nlink() > 1 {
                    self.linked.insert((m.dev(), m.ino()), name.clone());
                }
                let (n, sha256) = append_file(tar, &mut header, &in_tar, &path, &m)?;
                entry.kind = Kind::File;
                entry.size = n;
                entry.sha256 = sha256;
                self.summary.bytes += n;
                (self.progress)(n);
            }
        } else {
            self.summary.skipped.push(format!("{name}: {}", special_kind(ft)));
            return Ok(false);
        }
        self.summary.entries += 1;
        self.entries.push(entry);
        Ok(ft.is_dir())
    }
}

/// Appends a regular file's content, as a sparse entry when it has holes worth keeping; its length and
/// sha256.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    in_tar: &str,
    path: &Path,
    m: &std::fs::Metadata,
) -> Result<(u64, String), ArchiveError> {
    let add = |e: std::io::Error| ArchiveError::Io { op: format!("archive {}", path.display()), source: e };
    let f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let holes = sparse_segments(&f, m).map_err(io(format!("find the holes of {}", path.display())))?;
    let Some(segments) = holes else {
        let mut r = Hashing { inner: f, hash: Sha256::new(), n: 0 };
        tar.append_data(header, in_tar, &mut r).map_err(add)?;
        return Ok((r.n, hex::encode(r.hash.finalize())));
    };
    let (ext, stored) = sparse_header(header, &segments, m.len());
    let mut r = Sparse::new(f, segments, m.len());
    tar.append_data(header, in_tar, ext.as_slice().chain(&mut r)).map_err(add)?;
    if r.stored != stored {
        return Err(add(std::io::Error::other("the file changed while it was archived")));
    }
    Ok((m.len(), r.finish()))
}

/// What a file that is not archived is (sockets, fifos and device nodes are left out, and said).
fn special_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_socket() {
        "a socket"
    } else if ft.is_fifo() {
        "a fifo"
    } else {
        "a device node"
    }
}

/// Appends `manifest.json`, last: every entry, and what was left out.
fn append_manifest<W: Write>(
    tar: &mut tar::Builder<W>,
    bot: &str,
    entries: Vec<Entry>,
    skipped: Vec<String>,
) -> Result<(), ArchiveError> {
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let manifest = Manifest { format: manifest::FORMAT.into(), bot: bot.into(), created_at_ms, entries, skipped };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime((created_at_ms / 1000) as u64);
    tar.append_data(&mut header, MANIFEST, json.as_slice()).map_err(io("write the manifest"))
}

/// A file's data segments, 512-byte aligned as tar needs them, when it has holes worth keeping (at least
/// 64 KiB of them); `None` for a dense file.
fn sparse_segments(f: &std::fs::File, m: &std::fs::Metadata) -> std::io::Result<Option<Vec<(u64, u64)>>> {
    let len = m.len();
    if len < 64 << 10 || m.blocks().saturating_mul(512) + (64 << 10) > len {
        return Ok(None);
    }
    let mut segments: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    while at < len {
        let start = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(start))?.min(len);
        let (start, end) = (start & !511, end.div_ceil(512).saturating_mul(512).min(len));
        match segments.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => segments.push((start, end)),
        }
        at = end.max(at + 1);
    }
    let stored: u64 = segments.iter().map(|(s, e)| e - s).sum();
    Ok((stored + (64 << 10) <= len).then_some(segments))
}

/// Makes `header` a GNU sparse header for `segments` of a `len`-byte file; returns the extension
/// blocks that follow it and the bytes of data stored.
fn sparse_header(header: &mut tar::Header, segments: &[(u64, u64)], len: u64) -> (Vec<u8>, u64) {
    // The last block, of no data at the file's end, gives its length when it ends in a hole.
    let mut blocks: Vec<(u64, u64)> = segments.iter().map(|&(s, e)| (s, e - s)).collect();
    blocks.push((len, 0));
    let stored: u64 = segments.iter().map(|(s, e)| e - s).sum();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_size(stored);
    let mut ext = Vec::new();
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_real_size(len);
        let (first, rest) = blocks.split_at(blocks.len().min(gnu.sparse.len()));
        for (slot, &(off, n)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(off);
            slot.set_length(n);
        }
        gnu.set_is_extended(!rest.is_empty());
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut e = tar::GnuExtSparseHeader::new();
            for (slot, &(off, n)) in e.sparse.iter_mut().zip(chunk.iter()) {
                slot.set_offset(off);
                slot.set_length(n);
            }
            e.set_is_extended(i + 1 < chunks.len());
            ext.extend_from_slice(e.as_bytes());
        }
    }
    (ext, stored)
}

/// Reads a sparse file's data segments in order while hashing its whole content (holes as zeros).
struct Sparse {
    file: std::fs::File,
    segments: std::vec::IntoIter<(u64, u64)>,
    current: Option<(u64, u64)>,
    /// How far the hash has got through the file.
    hashed: u64,
    len: u64,
    hash: Sha256,
    stored: u64,
}

impl Sparse {
    fn new(file: std::fs::File, segments: Vec<(u64, u64)>, len: u64) -> Sparse {
        Sparse { file, segments: segments.into_iter(), current: None, hashed: 0, len, hash: Sha256::new(), stored: 0 }
    }

    fn zeros_to(&mut self, to: u64) {
        let zeros = [0u8; 64 << 10];
        while self.hashed < to {
            let n = (to - self.hashed).min(zeros.len() as u64);
            self.hash.update(&zeros[..n as usize]);
            self.hashed += n;
        }
    }

    /// The hex sha256 of the whole file.
    fn finish(mut self) -> String {
        self.zeros_to(self.len);
        hex::encode(self.hash.finalize())
    }
}

impl Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let (at, end) = match self.current {
                Some((at, end)) if at < end => (at, end),
                _ => match self.segments.next() {
                    Some(seg) => {
                        self.current = Some(seg);
                        continue;
                    }
                    None => return Ok(0),
                },
            };
            self.zeros_to(at);
            let want = (end - at).min(buf.len() as u64) as usize;
            let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..want], at)?;
            if n == 0 {
                return Err(std::io::Error::other("the file shrank while it was archived"));
            }
            self.hash.update(&buf[..n]);
            self.hashed += n as u64;
            self.stored += n as u64;
            self.current = Some((at + n as u64, end));
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::super::extract::{Options, extract};
    use super::*;

    /// A 256 MiB file with 30 islands of data (more than a GNU header's four slots), ending in a hole.
    fn islands(path: &Path) -> Vec<u8> {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(256 << 20).unwrap();
        for i in 0..30u64 {
            f.write_at(format!("island {i}").as_bytes(), i * (8 << 20) + 777).unwrap();
        }
        std::fs::read(path).unwrap()
    }

    #[test]
    fn sparse_files_stay_sparse_and_what_cannot_be_archived_is_listed() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let want = islands(&src.join("sparse"));
        std::fs::write(src.join("dense"), vec![7u8; 200 << 10]).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, src.join("fifo"), rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();

        let archive = t.path().join("a.tar");
        let out = std::fs::File::create(&archive).unwrap();
        let summary = write_archive(&src, "b", Compression::None, out, &mut |_| {}).unwrap();
        assert_eq!(summary.skipped, vec!["fifo: a fifo".to_string(), "sock: a socket".to_string()]);
        let size = std::fs::metadata(&archive).unwrap().len();
        assert!(size < 1 << 20, "a 256 MiB sparse file made a {size}-byte archive");
        let manifest = String::from_utf8_lossy(&std::fs::read(&archive).unwrap()).into_owned();
        assert!(manifest.contains("\"fifo: a fifo\""), "the manifest lists what was skipped");

        // Ours extracts it sparse and verified.
        let opts = Options { max_bytes: 1 << 30, replace: true };
        let got = extract(std::fs::File::open(&archive).unwrap(), Some(&dst), opts, &mut |_| {}).unwrap();
        assert!(got.verified);
        let m = std::fs::metadata(dst.join("data/sparse")).unwrap();
        assert_eq!(std::fs::read(dst.join("data/sparse")).unwrap(), want);
        assert!(m.blocks() * 512 < 1 << 20, "extracted dense: {} blocks", m.blocks());
        // GNU tar reads it too, to the same bytes.
        let gnu = t.path().join("gnu");
        std::fs::create_dir(&gnu).unwrap();
        let st = std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&gnu).status().unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(gnu.join("data/sparse")).unwrap(), want);
        assert_eq!(std::fs::read(gnu.join("data/dense")).unwrap(), vec![7u8; 200 << 10]);

        // A sparse entry's holes count against the expansion limit: no hashing a terabyte of holes.
        let small = Options { max_bytes: 64 << 20, replace: true };
        let e = extract(std::fs::File::open(&archive).unwrap(), None, small, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");
    }
}
