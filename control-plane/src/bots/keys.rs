//! The containerd snapshot keys berthd makes for a bot's operations, named in one place: settling an
//! operation a crash interrupted finds its leftovers by these names, so whatever makes a key and whatever
//! looks for it must agree.

/// A user snapshot made by operation `op` (a snapshot, or the undo point of an import).
pub fn snapshot(bot: &str, op: &str) -> String {
    format!("berth.{bot}.snap.{op}")
}

/// The temporary snapshot a running export reads from.
pub fn export(bot: &str, op: &str) -> String {
    format!("berth.{bot}.export.{op}")
}

/// The merged (flattened) layer a rollback or import lays a bot on when its chain is too deep.
pub fn flat(bot: &str, op: &str) -> String {
    format!("berth.{bot}.flat.{op}")
}

/// The new writable layer a rollback or import switches the bot to.
pub fn active(bot: &str, op: &str) -> String {
    format!("berth.{bot}.active.{op}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_name_the_bot_the_kind_and_the_operation() {
        assert_eq!(super::snapshot("b", "o"), "berth.b.snap.o");
        assert_eq!(super::export("b", "o"), "berth.b.export.o");
        assert_eq!(super::flat("b", "o"), "berth.b.flat.o");
        assert_eq!(super::active("b", "o"), "berth.b.active.o");
    }
}
