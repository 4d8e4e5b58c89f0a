//! Streaming reads. [`pump`] runs on a blocking thread, reads a file range in chunks and hands each to a
//! sender; it stops as soon as the sender reports that the client is gone.

use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Chunk size when the client gives none.
pub const DEFAULT_CHUNK_BYTES: u32 = 256 << 10;
/// Largest chunk the agent sends.
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;

/// One piece of a download.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
    /// Set on the first chunk.
    pub file_size_bytes: u64,
    pub eof: bool,
    /// Set on the last chunk.
    pub sha256: String,
}

/// Sends `[offset, offset+length)` of `file` (length 0 = to the end) through `send`, which returns false
/// once the receiver is gone. The last chunk has `eof` and the sha256 of everything sent.
pub fn pump(
    file: &File,
    shown: &str,
    size: u64,
    offset: u64,
    length: u64,
    chunk_bytes: u32,
    mut send: impl FnMut(Result<Chunk>) -> bool,
) {
    let chunk = if chunk_bytes == 0 { DEFAULT_CHUNK_BYTES } else { chunk_bytes.min(MAX_CHUNK_BYTES) } as usize;
    let end = if length == 0 { u64::MAX } else { offset.saturating_add(length) };
    let mut hasher = Sha256::new();
    let mut pos = offset;
    let mut first = true;
    loop {
        let want = usize::try_from((end - pos).min(chunk as u64)).unwrap_or(chunk);
        let mut buf = vec![0u8; want];
        let n = if want == 0 {
            0
        } else {
            match read_full(file, &mut buf, pos) {
                Ok(n) => n,
                Err(e) => {
                    send(Err(Error::io("read", shown, e)));
                    return;
                }
            }
        };
        if n == 0 {
            let last = Chunk {
                offset: pos,
                data: Vec::new(),
                file_size_bytes: if first { size } else { 0 },
                eof: true,
                sha256: hex::encode(hasher.finalize()),
            };
            send(Ok(last));
            return;
        }
        buf.truncate(n);
        hasher.update(&buf);
        let c = Chunk {
            offset: pos,
            data: buf,
            file_size_bytes: if first { size } else { 0 },
            eof: false,
            sha256: String::new(),
        };
        first = false;
        pos += n as u64;
        if !send(Ok(c)) {
            return;
        }
    }
}

fn read_full(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
