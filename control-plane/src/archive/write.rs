//! Writing a data archive from a directory that does not change while it is read (a mounted snapshot).
//! Symbolic links are archived as links, never followed; hard links are archived once and linked.

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
    let mut entries: Vec<Entry> = Vec::new();
    let mut summary = Summary::default();
    // (dev, inode) of files with several links → the first path archived.
    let mut linked: HashMap<(u64, u64), String> = HashMap::new();
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
            let path = root.join(&rel);
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
            if ft.is_dir() {
                tar.append_data(&mut header, &in_tar, std::io::empty()).map_err(add)?;
                subdirs.push(rel);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(format!("read link {}", path.display())))?;
                header.set_size(0);
                tar.append_link(&mut header, &in_tar, &target).map_err(add)?;
                entry.kind = Kind::Symlink;
                entry.target = target.to_string_lossy().into_owned();
            } else if ft.is_file() {
                if m.nlink() > 1
                    && let Some(first) = linked.get(&(m.dev(), m.ino()))
                {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    tar.append_link(&mut header, &in_tar, format!("{DATA_DIR}/{first}")).map_err(add)?;
                    entry.kind = Kind::Hardlink;
                    entry.target = first.clone();
                } else {
                    if m.nlink() > 1 {
                        linked.insert((m.dev(), m.ino()), name.clone());
                    }
                    let f = std::fs::File::open(&path).map_err(io(format!("open {}", path.display())))?;
                    let mut r = Hashing { inner: f, hash: Sha256::new(), n: 0 };
                    tar.append_data(&mut header, &in_tar, &mut r).map_err(add)?;
                    entry.kind = Kind::File;
                    entry.size = r.n;
                    entry.sha256 = hex::encode(r.hash.finalize());
                    summary.bytes += r.n;
                    progress(r.n);
                }
            } else {
                let what = if ft.is_socket() {
                    "a socket"
                } else if ft.is_fifo() {
                    "a fifo"
                } else {
                    "a device node"
                };
                summary.skipped.push(format!("{name}: {what}"));
                continue;
            }
            summary.entries += 1;
            entries.push(entry);
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        bot: bot.into(),
        created_at_ms: crate::bots::model::now_ms(),
        entries,
        skipped: summary.skipped.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime((manifest.created_at_ms / 1000) as u64);
    tar.append_data(&mut header, MANIFEST, json.as_slice()).map_err(io("write the manifest"))?;
    let out = tar.into_inner().map_err(io("finish the archive"))?;
    summary.verified = true;
    Ok((out, summary))
}
