//! Berth data archives: a bot's `/data` as a streamed tar (zstd, gzip or plain), entries under `data/`,
//! with `manifest.json` last (every entry's type, mode, owner, size, sha256 and link target). `write.rs`
//! makes them from an immutable, mounted snapshot; `extract.rs` treats every archive as hostile: it
//! rejects absolute paths, `..`, links that climb out of the root, device nodes, writes through symbolic
//! links and archives that expand past a limit, and never follows a link on the host.

#![forbid(unsafe_code)]

pub mod extract;
pub mod manifest;
pub mod pipe;
pub mod write;

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

/// The directory inside an archive holding the data.
pub const DATA_DIR: &str = "data";
/// The manifest's name inside an archive.
pub const MANIFEST: &str = "manifest.json";

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive tries something it must not; nothing it contained was applied.
    #[error("archive entry `{entry}` is refused: {reason}")]
    Hostile { entry: String, reason: String },
    #[error("the archive expands beyond the limit of {limit} bytes (a decompression bomb, or raise the import limit)")]
    TooLarge { limit: u64 },
    /// The archive is damaged or does not match its manifest.
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let op = op.into();
    move |source| ArchiveError::Io { op, source }
}

/// What was written or extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Whether a manifest was present and every entry matched it.
    pub verified: bool,
    /// Entries left out (sockets, devices, fifos), with why.
    pub skipped: Vec<String>,
}
