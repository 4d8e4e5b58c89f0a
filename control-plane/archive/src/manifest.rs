//! The archive manifest: one record per entry, written last, checked by the importer.

use serde::{Deserialize, Serialize};

/// Format tag of the manifest.
pub const FORMAT: &str = "berth-data/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Hardlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the data root, `/`-separated.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Hex sha256 of a file's content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// A symlink's target, or the path a hard link shares its file with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The bot the data came from.
    pub bot: String,
    pub created_at_ms: i64,
    pub entries: Vec<Entry>,
    /// Entries not archived (sockets, devices, fifos), with why.
    #[serde(default)]
    pub skipped: Vec<String>,
}
