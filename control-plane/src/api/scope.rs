//! A token's [`Scope`] (`auth/`) on the gRPC API: the interceptor in `mod.rs` puts the caller's scope in
//! the request's extensions; handlers ask it before acting and get PERMISSION_DENIED statuses.

use tonic::{Request, Status};

pub use crate::auth::Scope;

impl Scope {
    /// The scope of the request's token (everything when berthd has no tokens).
    pub fn of<T>(r: &Request<T>) -> Scope {
        r.extensions().get::<Scope>().cloned().unwrap_or(Scope::All)
    }

    /// PERMISSION_DENIED unless the token may act on `bot`.
    pub fn allow(&self, bot: &str) -> Result<(), Status> {
        if self.sees(bot) { Ok(()) } else { Err(denied(bot)) }
    }

    /// PERMISSION_DENIED unless the token is unscoped (for host-wide actions such as pulling images).
    pub fn admin(&self, action: &str) -> Result<(), Status> {
        match self {
            Scope::All => Ok(()),
            Scope::Bots(_) => Err(Status::permission_denied(format!(
                "this API token is scoped to bots and may not {action}; use an unscoped token"
            ))),
        }
    }
}

/// The refusal of a call on a bot outside the caller's scope.
pub fn denied(bot: &str) -> Status {
    Status::permission_denied(format!("this API token may not act on bot `{bot}`"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_decide() {
        let s = Scope::parse("bots=alice, bob").unwrap();
        assert_eq!(s.allow("carol").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(s.admin("pull images").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(Scope::All.admin("pull images").is_ok());
    }
}
