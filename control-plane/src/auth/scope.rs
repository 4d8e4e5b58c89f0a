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

    /// The scope as a node forwards it to a peer with the call: `all`, or `bots=a,b`.
    pub fn encode(&self) -> String {
        match self {
            Scope::All => "all".into(),
            Scope::Bots(b) => format!("bots={}", b.iter().map(String::as_str).collect::<Vec<_>>().join(",")),
        }
    }

    /// A forwarded scope, as [`Scope::encode`] wrote it. Unlike a token line, nothing is not `all`: a
    /// forwarded call without a scope is refused, never taken for an unscoped one.
    pub fn decode(text: &str) -> Result<Scope, String> {
        match text.trim() {
            "all" => Ok(Scope::All),
            "" => Err("the forwarded scope is empty".into()),
            t => Scope::parse(t),
        }
    }

    /// This scope cut down to the one bot a call acts on, if it sees that bot: what a node forwards, so
    /// the owner is given no more than the call needs.
    pub fn narrow(&self, bot: &str) -> Option<Scope> {
        self.sees(bot).then(|| Scope::Bots(Arc::new([bot.to_string()].into())))
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

    #[test]
    fn forwarded_scopes_round_trip_and_empty_is_no_scope() {
        for s in [Scope::All, Scope::parse("bots=alice,bob").unwrap()] {
            assert_eq!(Scope::decode(&s.encode()).unwrap(), s);
        }
        assert!(Scope::decode("").is_err() && Scope::decode("  ").is_err() && Scope::decode("everything").is_err());
        assert_eq!(Scope::All.narrow("a"), Some(Scope::parse("bots=a").unwrap()));
        assert_eq!(Scope::parse("bots=a,b").unwrap().narrow("b"), Some(Scope::parse("bots=b").unwrap()));
        assert_eq!(Scope::parse("bots=a").unwrap().narrow("b"), None);
    }
}
