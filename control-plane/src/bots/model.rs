//! What a bot is, as the control plane records it.

pub use crate::store::records::{BotEvent, BotRecord, BotState};
pub use crate::time::now_ms;

/// Checks a bot name: 1-63 of `[a-z0-9-]`, starting with a letter, not ending with `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("bot name {name:?} is invalid: use 1-63 lowercase letters, digits and `-`, starting with a letter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "bot-1", "x9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1bot", "Bot", "bot-", "a_b", "a/b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [BotState::Creating, BotState::Stopped, BotState::Running, BotState::Error, BotState::Deleting] {
            assert_eq!(BotState::parse(s.as_str()), Some(s));
        }
    }
}
