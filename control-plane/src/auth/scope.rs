//! What an API token may act on. The token file holds one token per line, optionally followed by
//! `bots=NAME[,NAME…]`: such a token acts only on those bots (create, use, snapshot, export, delete them;
//! list and watch only them) and may not pull or import images. A token without a scope, or no tokens at
//! all (a private Unix socket), may do everything.

use std::collections::BTreeSet;
use std::sync::Arc;

/// What a token may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Bots(Arc<BTreeSet<String>>),
}

impl Scope {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_see() {
        assert_eq!(Scope::parse("").unwrap(), Scope::All);
        let s = Scope::parse("bots=alice, bob").unwrap();
        assert!(s.sees("alice") && s.sees("bob") && !s.sees("carol"));
        assert!(Scope::parse("robots=x").is_err());
        assert!(Scope::parse("bots=").is_err());
    }
}
