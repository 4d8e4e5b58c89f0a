//! The agent's one boundary error type. Domain code returns [`Error`]; `api/mod.rs` maps it to a gRPC
//! status in one place. Variants are decisions (what the caller should do), not sources.

use std::io;

/// What went wrong, phrased for the person who made the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the target is in the wrong state (a directory where a file was expected,
    /// a directory that is not empty).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A cap was hit (entries, message size, disk space).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Aborted(String),
    /// An offset outside what is kept (output already dropped from a journal).
    #[error("{0}")]
    OutOfRange(String),
    /// A bug or an unexpected system failure; the source is logged, not sent.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<io::Error>,
    },
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies an I/O failure of `op` on the client-visible `path` by its errno.
    pub fn io(op: &str, path: &str, err: io::Error) -> Self {
        let msg = format!("{op} `{path}`: {}", describe(&err));
        match err.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound(msg),
            Some(libc::EEXIST) => Error::AlreadyExists(msg),
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => Error::PermissionDenied(msg),
            Some(
                libc::EISDIR
                | libc::ENOTDIR
                | libc::ENOTEMPTY
                | libc::ELOOP
                | libc::EXDEV
                | libc::EBUSY
                | libc::ETXTBSY,
            ) => Error::FailedPrecondition(msg),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE) => Error::ResourceExhausted(msg),
            Some(libc::EINVAL | libc::ENAMETOOLONG) => Error::InvalidArgument(msg),
            _ => Error::Internal { message: msg, source: Some(err) },
        }
    }

    /// An internal failure with context and no I/O source.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into(), source: None }
    }
}

/// The OS's description without Rust's " (os error N)" suffix, which means nothing to a user.
fn describe(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let s = io::Error::from_raw_os_error(code).to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_decision() {
        let e = Error::io("open", "/x", io::Error::from_raw_os_error(2));
        assert!(matches!(e, Error::NotFound(ref m) if m == "open `/x`: No such file or directory"));
        let e = Error::io("write", "/x", io::Error::from_raw_os_error(28));
        assert!(matches!(e, Error::ResourceExhausted(_)));
        let e = Error::io("rmdir", "/x", io::Error::from_raw_os_error(39));
        assert!(matches!(e, Error::FailedPrecondition(_)));
        let e = Error::io("read", "/x", io::Error::from_raw_os_error(5));
        assert!(matches!(e, Error::Internal { .. }));
    }
}
