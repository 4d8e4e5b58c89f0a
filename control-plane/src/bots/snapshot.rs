//! A bot's snapshots: create (consistent: the task is frozen while its writable layer is copied, so
//! sessions live on), list, delete. Snapshots are containerd snapshots labelled with their bot and name;
//! containerd, not the database, is their source of truth, so they survive a lost database and are found
//! by label after any crash. A snapshot others are layered on is hidden when deleted and removed as soon
//! as nothing needs it.

use std::collections::HashMap;

use super::BotManager;
use super::Platform;
use super::model::{BotRecord, BotState};
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, KIND_SNAPSHOT, LABEL_BOT, LABEL_KIND, SnapshotInfo};

/// Label holding a snapshot's user-visible name.
pub const LABEL_NAME: &str = "io.berth.snapshot";
/// Label marking a snapshot deleted by its user but still needed by others layered on it.
pub const LABEL_DELETED: &str = "io.berth.deleted";
/// Label naming the operation that made a snapshot.
pub const LABEL_OP: &str = "io.berth.op";

/// A snapshot as users see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// The snapshot this one was taken on top of (after a rollback), if it is one of the bot's.
    pub parent: Option<String>,
    pub created_at_ms: i64,
    /// Bytes of its own layer (what the bot changed since its parent).
    pub size_bytes: u64,
}

/// The name of the snapshot an import keeps of the data it replaces (operation `op_id`).
pub fn pre_import_name(op_id: &str) -> String {
    format!("pre-import-{}", op_id.get(..8).unwrap_or(op_id))
}

/// Checks a snapshot name: 1-63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "snapshot name {name:?} is invalid: use 1-63 letters, digits, `.`, `_` and `-`, starting with a letter or digit"
        )))
    }
}

/// The labels of a snapshot of `bot` that operation `op` makes for its own use: of kind `kind`, never
/// listed, and swept as soon as nothing is layered on it (after a crash too).
pub(super) fn hidden_labels(bot: &str, kind: &str, op: &str) -> HashMap<String, String> {
    [
        (LABEL_BOT.to_string(), bot.to_string()),
        (LABEL_KIND.to_string(), kind.to_string()),
        (LABEL_OP.to_string(), op.to_string()),
        (LABEL_DELETED.to_string(), "true".to_string()),
    ]
    .into()
}

/// A bot's own snapshots (not deleted), by key.
pub(super) fn visible(all: &[SnapshotInfo]) -> impl Iterator<Item = &SnapshotInfo> {
    all.iter().filter(|s| {
        s.committed
            && s.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_SNAPSHOT)
            && !s.labels.contains_key(LABEL_DELETED)
    })
}

fn name_of(s: &SnapshotInfo) -> String {
    s.labels.get(LABEL_NAME).cloned().unwrap_or_else(|| s.key.clone())
}

impl<P: Platform> BotManager<P> {
    /// Takes a snapshot of a bot's files (its whole writable layer, `/data` included). A running bot is
    /// frozen for the copy and then thawed: its processes and sessions carry on.
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn create_snapshot(&self, name: &str, snapshot: Option<String>) -> Result<(Snapshot, String)> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.data_bot(name).await?;
        let all = self.runtime.snapshots(LABEL_BOT, name).await?;
        let snapshot = match snapshot.filter(|s| !s.is_empty()) {
            Some(s) => {
                validate_snapshot_name(&s)?;
                if visible(&all).any(|x| name_of(x) == s) {
                    return Err(Error::AlreadyExists(format!("bot `{name}` already has a snapshot named `{s}`")));
                }
                s
            }
            None => unique_name(&all),
        };
        let op = self.begin_op(name, "snapshot", &snapshot, serde_json::json!({})).await?;
        let result = self.capture(&bot, &snapshot, &op.id).await;
        let snap = self.end_op(&op, &snapshot, result).await?;
        Ok((snap, op.id))
    }

    /// Captures the bot's current writable snapshot as snapshot `snapshot`; the caller holds the bot lock.
    pub(super) async fn capture(&self, bot: &BotRecord, snapshot: &str, op: &str) -> Result<Snapshot> {
        let active = self.runtime.container_snapshot(&bot.container_id).await?;
        let freeze = (bot.state == BotState::Running).then_some(bot.container_id.as_str());
        let key = super::keys::snapshot(&bot.name, op);
        let labels: HashMap<String, String> = [
            (LABEL_BOT.to_string(), bot.name.clone()),
            (LABEL_KIND.to_string(), KIND_SNAPSHOT.to_string()),
            (LABEL_NAME.to_string(), snapshot.to_string()),
            (LABEL_OP.to_string(), op.to_string()),
        ]
        .into();
        let info = self.runtime.capture_snapshot(&active, freeze, &key, labels).await?;
        let size_bytes = self.runtime.snapshot_usage(&key).await?;
        Ok(Snapshot { name: snapshot.to_string(), parent: None, created_at_ms: info.created_at_ms, size_bytes })
    }

    /// The bot's snapshots, oldest first.
    pub async fn list_snapshots(&self, name: &str) -> Result<Vec<Snapshot>> {
        self.own_bot(name).await?;
        let all = self.runtime.snapshots(LABEL_BOT, name).await?;
        let names: HashMap<&str, String> = visible(&all).map(|s| (s.key.as_str(), name_of(s))).collect();
        let mut out = Vec::new();
        for s in visible(&all) {
            out.push(Snapshot {
                name: name_of(s),
                parent: names.get(s.parent.as_str()).cloned(),
                created_at_ms: s.created_at_ms,
                size_bytes: self.runtime.snapshot_usage(&s.key).await.unwrap_or(0),
            });
        }
        out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Deletes a snapshot. One that others (later snapshots, or the bot itself after a rollback) are
    /// layered on disappears from the list at once and frees its space when the last of them goes.
    #[tracing::instrument(skip_all, fields(bot.name = %name, snapshot = %snapshot))]
    pub async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        self.own_bot(name).await?;
        let key = self.snapshot_key(name, snapshot).await?;
        self.runtime.label_snapshot(&key, [(LABEL_DELETED.to_string(), "true".to_string())].into()).await?;
        self.sweep_snapshots(name).await
    }

    /// The containerd key of the bot's snapshot named `snapshot`.
    pub(super) async fn snapshot_key(&self, name: &str, snapshot: &str) -> Result<String> {
        let all = self.runtime.snapshots(LABEL_BOT, name).await?;
        visible(&all)
            .find(|s| name_of(s) == snapshot)
            .map(|s| s.key.clone())
            .ok_or_else(|| Error::NotFound(format!("bot `{name}` has no snapshot named `{snapshot}`")))
    }

    /// Removes the bot's deleted snapshots that nothing is layered on any more (repeatedly, so a chain
    /// of them goes at once).
    pub(super) async fn sweep_snapshots(&self, name: &str) -> Result<()> {
        loop {
            let all = self.runtime.snapshots(LABEL_BOT, name).await?;
            let removable: Vec<&SnapshotInfo> = all
                .iter()
                .filter(|s| s.labels.contains_key(LABEL_DELETED))
                .filter(|s| !all.iter().any(|c| c.parent == s.key))
                .collect();
            if removable.is_empty() {
                return Ok(());
            }
            let mut removed = 0;
            for s in removable {
                match self.runtime.remove_snapshot(&s.key).await {
                    Ok(()) => removed += 1,
                    // Something not labelled as the bot's (an export's view) still uses it: later.
                    Err(crate::runtime::RuntimeError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if removed == 0 {
                return Ok(());
            }
        }
    }

    /// The bot, checked to be in a state whose data can be worked on.
    pub(super) async fn data_bot(&self, name: &str) -> Result<BotRecord> {
        let bot = self.own_bot(name).await?;
        match bot.state {
            BotState::Running | BotState::Stopped | BotState::Error => Ok(bot),
            s => Err(Error::FailedPrecondition(format!(
                "bot `{name}` is {}; its data can be worked on when it is running, stopped or in error",
                s.as_str()
            ))),
        }
    }
}

/// `snap-YYYYMMDD-HHMMSS` (UTC), made unique among the bot's snapshots.
fn unique_name(all: &[SnapshotInfo]) -> String {
    let secs = super::model::now_ms() / 1000;
    let base = format!("snap-{}", crate::time::compact(secs));
    let taken = |n: &str| visible(all).any(|s| name_of(s) == n);
    if !taken(&base) {
        return base;
    }
    (2..).map(|i| format!("{base}-{i}")).find(|n| !taken(n)).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_names() {
        for ok in ["a", "v1.2", "before_upgrade", "9-x"] {
            assert!(super::validate_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"a".repeat(64)] {
            assert!(super::validate_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}
