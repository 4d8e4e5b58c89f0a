//! The control plane's boundary error: what the caller should do, not where it came from. Module errors
//! convert into it here; `api/mod.rs` maps it to a gRPC status in one place.

use crate::runtime::RuntimeError;
use crate::store::StoreError;

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

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Error {
        match e {
            RuntimeError::NotFound { what } => Error::NotFound(format!("{what} not found in containerd")),
            RuntimeError::AlreadyExists { what } => {
                Error::AlreadyExists(format!("{what} already exists in containerd"))
            }
            e @ (RuntimeError::Unavailable { .. } | RuntimeError::Timeout { .. }) => Error::Unavailable(chain(&e)),
            e @ RuntimeError::InvalidImage { .. } => Error::InvalidArgument(e.to_string()),
            e @ RuntimeError::NoSpace { .. } => Error::ResourceExhausted(e.to_string()),
            e => Error::internal("container runtime failure", e),
        }
    }
}

impl From<crate::network::NetworkError> for Error {
    fn from(e: crate::network::NetworkError) -> Error {
        Error::internal("bot network failure", e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound { what } => Error::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists { what } => Error::AlreadyExists(format!("{what} already exists")),
            e @ StoreError::Unavailable { .. } => Error::Unavailable(chain(&e)),
            e => Error::internal("database failure", e),
        }
    }
}

impl From<crate::runtime::registry::RegistryError> for Error {
    fn from(e: crate::runtime::registry::RegistryError) -> Error {
        use crate::runtime::registry::RegistryError as R;
        match e {
            e @ R::BadReference(_) => Error::InvalidArgument(e.to_string()),
            e @ R::NotFound { .. } => Error::NotFound(e.to_string()),
            e @ R::Unauthorized { .. } => Error::FailedPrecondition(e.to_string()),
            e @ R::Invalid(_) => Error::InvalidArgument(e.to_string()),
            e => Error::Unavailable(chain(&e)),
        }
    }
}
