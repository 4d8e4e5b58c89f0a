//! Bearer-token authentication for every RPC, health included. The token is compared in constant time
//! and never logged.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The container's token.
#[derive(Clone)]
pub struct Token(Arc<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Shortest token accepted; anything shorter is a configuration mistake.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    /// Reads the token from `path`; surrounding whitespace is ignored.
    pub fn from_file(path: &std::path::Path) -> Result<Token, String> {
        let raw = std::fs::read(path).map_err(|e| format!("cannot read token file `{}`: {e}", path.display()))?;
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "token file `{}` holds {} bytes; at least {MIN_TOKEN_BYTES} are required",
                path.display(),
                trimmed.len()
            ));
        }
        Ok(Token(Arc::new(trimmed.to_vec())))
    }

    /// Checks a request's `authorization: Bearer <token>` header.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated("missing `authorization: Bearer <token>` metadata"));
        };
        let presented = value.as_bytes().strip_prefix(b"Bearer ").unwrap_or(b"");
        if bool::from(presented.ct_eq(self.0.as_slice())) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid agent token"))
        }
    }
}
