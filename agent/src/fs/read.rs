//! Unary reads: a window of lines with binary detection, or a raw byte range. Larger transfers use
//! `download.rs`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

use rustix::fs::{FileType, Mode, OFlags};

use super::root::{RelPath, Root};
use crate::error::{Error, Result};

/// Default cap on returned content.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Hard cap on returned content; bigger reads must stream.
pub const MAX_BYTES_CEILING: u64 = 16 << 20;
/// A NUL byte in this many leading bytes marks a file as binary.
const BINARY_PROBE_BYTES: usize = 8 << 10;

/// What to read.
#[derive(Debug, Clone, Copy)]
pub enum ReadMode {
    Lines { start_line: u64, max_lines: u64 },
    Bytes { offset: u64, length: u64 },
}

/// The result of a read.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub content: Vec<u8>,
    pub binary: bool,
    pub total_lines: u64,
    pub lines_returned: u64,
    pub truncated: bool,
    pub file_size_bytes: u64,
}

/// Opens a client path for reading: follows symlinks inside the root, refuses directories and anything
/// that is not a regular file or character device (a FIFO would block forever).
pub fn open_for_read(root: &Root, rel: &RelPath) -> Result<(File, u64)> {
    let shown = rel.display();
    let fd =
        root.open(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()).map_err(|e| Error::io("open", &shown, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", &shown, e.into()))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile | FileType::CharacterDevice => {}
        FileType::Directory => {
            return Err(Error::FailedPrecondition(format!("`{shown}` is a directory")));
        }
        _ => {
            return Err(Error::FailedPrecondition(format!("`{shown}` is not a regular file")));
        }
    }
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// Reads according to `mode`, returning at most `max_bytes` (0 = default) of content.
pub fn read(root: &Root, rel: &RelPath, mode: ReadMode, max_bytes: u64) -> Result<ReadOutcome> {
    let max = if max_bytes == 0 { DEFAULT_MAX_BYTES } else { max_bytes.min(MAX_BYTES_CEILING) };
    let (file, size) = open_for_read(root, rel)?;
    let shown = rel.display();
    let mut out = match mode {
        ReadMode::Bytes { offset, length } => read_range(&file, offset, length, max),
        ReadMode::Lines { start_line, max_lines } => read_lines(file, start_line, max_lines, max),
    }
    .map_err(|e| Error::io("read", &shown, e))?;
    out.file_size_bytes = size;
    Ok(out)
}

fn read_range(file: &File, offset: u64, length: u64, max: u64) -> std::io::Result<ReadOutcome> {
    let want = if length == 0 { max } else { length.min(max) };
    let truncated = length == 0 || length > max;
    let mut content = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
    let mut filled = 0;
    while filled < content.len() {
        let n = file.read_at(&mut content[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    content.truncate(filled);
    // `truncated` only when bytes were really left behind.
    let truncated = truncated && filled == want as usize && {
        let mut probe = [0u8; 1];
        file.read_at(&mut probe, offset + filled as u64)? == 1
    };
    Ok(ReadOutcome { content, truncated, ..Default::default() })
}

fn read_lines(file: File, start: u64, max_lines: u64, max: u64) -> std::io::Result<ReadOutcome> {
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let head = reader.fill_buf()?;
    if head[..head.len().min(BINARY_PROBE_BYTES)].contains(&0) {
        return Ok(ReadOutcome { binary: true, ..Default::default() });
    }
    let mut out = ReadOutcome::default();
    let mut line = Vec::new();
    let mut collecting = true;
    loop {
        line.clear();
        // Lines are read whole only while collecting; afterwards they are just counted.
        let n = if collecting {
            reader.read_until(b'\n', &mut line)?
        } else {
            count_rest(&mut reader, &mut out.total_lines)?;
            break;
        };
        if n == 0 {
            break;
        }
        let idx = out.total_lines;
        out.total_lines += 1;
        if idx < start {
            continue;
        }
        if max_lines != 0 && out.lines_returned >= max_lines {
            collecting = false;
            continue;
        }
        let room = max as usize - out.content.len();
        if line.len() > room {
            if out.lines_returned == 0 {
                out.content.extend_from_slice(&line[..room]);
                out.lines_returned = 1;
            }
            out.truncated = true;
            collecting = false;
            continue;
        }
        out.content.extend_from_slice(&line);
        out.lines_returned += 1;
    }
    Ok(out)
}

/// Counts the remaining lines without holding them (a final line without '\n' counts).
fn count_rest<R: BufRead>(reader: &mut R, total: &mut u64) -> std::io::Result<()> {
    let mut last = b'\n';
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        *total += memchr::memchr_iter(b'\n', buf).count() as u64;
        last = buf[buf.len() - 1];
        let n = buf.len();
        reader.consume(n);
    }
    if last != b'\n' {
        *total += 1;
    }
    Ok(())
}
