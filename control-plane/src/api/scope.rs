//! What an API token may act on. The token file holds one token per line, optionally followed by
//! `bots=NAME[,NAME…]`: such a token acts only on those bots (create, use, snapshot, export, delete them;
//! list and watch only them) and may not pull or import images. A token without a scope, or no tokens at
//! all (a private Unix socket), may do everything. The interceptor in `mod.rs` puts the caller's
//! [`Scope`] in the request's extensions; handlers ask it before acting.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Bots(Arc<BTreeSet<String>>),
}

impl Scope {
    /// The scope of the request's token (everything when berthd has no tokens).
    pub fn of<T>(r: &Request<T>) -> Scope {
        r.extensions().get::<Scope>().cloned().unwrap_or(Scope::All)
    }

    /// Parses the part of a token line after the token: empty, or `bots=a,b`.
    pub fn parse(rest: &str) -> Result<Scope, String> {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(Scope::All);
        }
        let list = rest
            .strip_prefix("bots=")
            .ok_or_else(|| format!("expected `bots=NAME,…` after the token, found {rest:?}"))?;
        let bots: BTreeSet<String> =
            list.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from).collect();
        if bots.is_empty() {
            return Err("`bots=` names no bot".into());
        }
        Ok(Scope::Bots(Arc::new(bots)))
    }

    pub fn sees(&self, bot: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Bots(b) => b.contains(bot),
        }
    }

    /// PERMISSION_DENIED unless the token may act on `bot`.
    pub fn allow(&self, bot: &str) -> Result<(), Status> {
        if self.sees(bot) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!("this API token may not act on bot `{bot}`")))
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_decide() {
        assert_eq!(Scope::parse("").unwrap(), Scope::All);
        let s = Scope::parse("bots=alice, bob").unwrap();
        assert!(s.sees("alice") && s.sees("bob") && !s.sees("carol"));
        assert_eq!(s.allow("carol").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(s.admin("pull images").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(Scope::All.admin("pull images").is_ok());
        assert!(Scope::parse("robots=x").is_err());
        assert!(Scope::parse("bots=").is_err());
    }
}
