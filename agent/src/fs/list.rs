//! Directory listing: recursive (depth-limited), sorted, paged, and capped so a huge tree answers
//! RESOURCE_EXHAUSTED instead of walking forever. Symlinks are reported, never followed below the top.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Dir, Mode, OFlags};

use super::info::{FileInfo, Kind, lstat_at};
use super::root::{RelPath, Root, name_os};
use crate::error::{Error, Result};

/// Entries per page when the client gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Entries walked at most when the client gives no cap.
pub const DEFAULT_MAX_ENTRIES: u32 = 100_000;

/// Listing options (see `ListDirRequest`).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub recursive: bool,
    pub max_depth: u32,
    pub page_size: u32,
    pub page_token: String,
    pub max_entries: u32,
}

/// One page of a listing.
#[derive(Debug)]
pub struct ListPage {
    pub entries: Vec<FileInfo>,
    pub next_page_token: String,
    pub total_entries: u64,
}

/// Lists the directory `rel`.
pub fn list(root: &Root, rel: &RelPath, opts: &ListOptions) -> Result<ListPage> {
    let shown = rel.display();
    let top = root.open(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::FailedPrecondition(format!("`{shown}` is not a directory"))
        } else {
            Error::io("list", &shown, e)
        }
    })?;
    let cap = if opts.max_entries == 0 { DEFAULT_MAX_ENTRIES } else { opts.max_entries } as usize;
    let max_depth = if !opts.recursive { 1 } else { opts.max_depth };
    let mut all = Vec::new();
    let mut stack: Vec<(OwnedFd, String, u32)> = vec![(top, String::new(), 1)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let shown_dir = if prefix.is_empty() { shown.clone() } else { format!("{shown}/{prefix}") };
        let names = read_names(&dir, &shown_dir)?;
        for name in names {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let info = match lstat_at(dir.as_fd(), &name, path.clone()) {
                Ok(info) => info,
                // Removed while we walked: not an error for a listing.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if all.len() >= cap {
                return Err(Error::ResourceExhausted(format!(
                    "`{shown}` has more than {cap} entries; list a subdirectory, lower max_depth or raise max_entries"
                )));
            }
            let descend = info.kind == Kind::Directory && (max_depth == 0 || depth < max_depth);
            all.push(info);
            if descend {
                match rustix::fs::openat(
                    &dir,
                    name_os(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => stack.push((fd, path, depth + 1)),
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(Error::io("list", &format!("{shown}/{path}"), e.into())),
                }
            }
        }
    }
    all.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let total_entries = all.len() as u64;
    let page_size = if opts.page_size == 0 { DEFAULT_PAGE_SIZE } else { opts.page_size } as usize;
    let start = if opts.page_token.is_empty() {
        0
    } else {
        all.partition_point(|e| e.path.as_str() <= opts.page_token.as_str())
    };
    let entries: Vec<FileInfo> = all.into_iter().skip(start).take(page_size).collect();
    let more = start + entries.len() < total_entries as usize;
    let next_page_token = match (more, entries.last()) {
        (true, Some(last)) => last.path.clone(),
        _ => String::new(),
    };
    Ok(ListPage { entries, next_page_token, total_entries })
}

fn read_names(dir: &OwnedFd, shown: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).map_err(|e| Error::io("read directory", shown, e.into()))? {
        let entry = entry.map_err(|e| Error::io("read directory", shown, e.into()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}
