//! Where each bot's calls went lately: a bot's owner read from the database is kept for [`FRESH`], so a
//! burst of calls for one bot (an exec's, a file tree's) asks the database once. A bot changes owner
//! only by being deleted and created again elsewhere, so an entry can be wrong for at most that long;
//! a call sent to the old owner in that window is refused there (a forwarded call is never sent on),
//! and the next one, after the entry expired, goes to the new owner. A node marked lost since is seen
//! from the last heartbeat round, not from here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an owner read from the database is used without asking again.
pub const FRESH: Duration = Duration::from_millis(500);
/// Entries kept before the stale ones are swept.
const SWEEP_AT: usize = 4096;

/// A bot's owner as cached: `None` for this node, else the peer's name and address.
pub type Route = Option<(String, String)>;

#[derive(Debug, Default)]
pub(super) struct Routes(Mutex<HashMap<String, (Instant, Route)>>);

impl Routes {
    /// The owner of `bot` if read within [`FRESH`].
    pub(super) fn get(&self, bot: &str) -> Option<Route> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(bot).filter(|(at, _)| at.elapsed() < FRESH).map(|(_, r)| r.clone())
    }

    pub(super) fn put(&self, bot: &str, route: Route) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= SWEEP_AT {
            map.retain(|_, (at, _)| at.elapsed() < FRESH);
        }
        map.insert(bot.to_string(), (Instant::now(), route));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_kept_while_fresh_and_sweeps_keep_the_map_bounded() {
        let r = Routes::default();
        assert_eq!(r.get("a"), None);
        r.put("a", Some(("node-2".into(), "127.0.0.2:1".into())));
        r.put("b", None);
        assert_eq!(r.get("a"), Some(Some(("node-2".into(), "127.0.0.2:1".into()))));
        assert_eq!(r.get("b"), Some(None));
        std::thread::sleep(FRESH + Duration::from_millis(20));
        assert_eq!(r.get("a"), None, "stale");
        for i in 0..SWEEP_AT + 1 {
            r.put(&format!("bot{i}"), None);
        }
        assert!(r.0.lock().unwrap().len() <= SWEEP_AT + 1);
    }
}
