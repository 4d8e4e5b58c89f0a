//! File operations on client paths, all confined to the agent's [`root::Root`]. This module owns the
//! file-system semantics (atomicity, caps, symlink handling); `api/files.rs` only translates.

pub mod download;
pub mod info;
pub mod list;
pub mod ops;
pub mod read;
pub mod root;
pub mod sweep;
pub mod watch;
pub mod write;
