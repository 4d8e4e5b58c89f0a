//! The control plane's boundary error: what the caller should do, not where it came from. It sits below
//! every module: each module's own error converts into it where that error is defined (`runtime/`,
//! `store/`, `network/`), and `api/mod.rs` maps it to a gRPC status in one place.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The bot is in the wrong state for the request; the message names the state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit or the host's disk is exhausted; freeing space (or raising the limit) helps.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position asked for is outside what is kept (an event id pruned or not yet given).
    #[error("{0}")]
    OutOfRange(String),
    /// containerd, the database or an agent is down or slow; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Internal { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// What a client may be shown of a failure in a dependency (containerd, the database) or inside berthd:
/// the error's own message, which says what was being done, and an id; its causes (addresses, paths,
/// driver texts) go to the log under that id, not to the client.
pub fn with_id(e: &(dyn std::error::Error + 'static)) -> String {
    let id = uuid::Uuid::new_v4();
    tracing::warn!(error.id = %id, error = %chain(e), "a request failed");
    format!("{e} (error {id}; see the berthd log)")
}

/// "a: b: c" for an error and its sources.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
