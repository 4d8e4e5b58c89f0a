//! Rolling a bot back in place to one of its snapshots, and the switch it shares with import: a new
//! writable snapshot is prepared on the target first; only then is the bot stopped (if running), its
//! container pointed at the new snapshot, the old writable layer discarded (the user asked to replace
//! it) and the bot started again. The operation row records both keys before the switch, so a berthd
//! killed half-way settles it on restart: the container's snapshot key says which side won.
//!
//! Every rollback and import lays the bot's new writable snapshot on a snapshot that may itself sit on
//! others (a snapshot taken after a rollback is layered on the one rolled back to), so layers would
//! stack without end. A parent deeper than [`MAX_LAYERS`] of the bot's own layers is first flattened
//! into one layer on the image (a hidden snapshot, removed once nothing is layered on it), and the old
//! chain is freed as its snapshots are deleted.

use std::collections::HashMap;

use super::BotManager;
use super::Platform;
use super::model::BotRecord;
use super::ops::Operation;
use super::snapshot::LABEL_OP;
use super::start::Fresh;
use crate::error::Result;
use crate::runtime::{ContainerRuntime, KIND_ACTIVE, KIND_FLAT, LABEL_BOT, LABEL_KIND, SnapshotInfo, TaskState};

/// The most of a bot's own committed layers its writable snapshot is prepared on. An overlay mount
/// names every layer (the image's too) in one option string of at most a page, and the kernel allows
/// 500 layers: eight keeps a bot far below both while flattening (a copy, or a clone on btrfs) only
/// every eighth rollback of a chain.
pub const MAX_LAYERS: usize = 8;

/// Label marking a writable snapshot a user asked to discard (removed by recovery if removal failed).
pub const LABEL_DISCARD: &str = "io.berth.discard";

impl<P: Platform> BotManager<P> {
    /// Rolls the bot back to snapshot `snapshot`. Changes since are discarded; a running bot is restarted.
    #[tracing::instrument(skip_all, fields(bot.name = %name, snapshot = %snapshot))]
    pub async fn rollback(&self, name: &str, snapshot: &str) -> Result<(BotRecord, String)> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.data_bot(name).await?;
        let key = self.snapshot_key(name, snapshot).await?;
        let op = self.begin_op(name, "rollback", snapshot, serde_json::json!({})).await?;
        let result = async {
            let new = self.prepare_active(&bot, &key, &op).await?;
            self.switch_active(&bot, &new, &op).await
        }
        .await;
        self.end_op(&op, snapshot, result).await?;
        Ok((self.store.get_bot(name).await?, op.id))
    }

    /// Prepares a new writable snapshot for the bot on `parent` (flattened first if it is too deep),
    /// named after the operation.
    pub(super) async fn prepare_active(&self, bot: &BotRecord, parent: &str, op: &Operation) -> Result<String> {
        let all = self.runtime.snapshots(LABEL_BOT, &bot.name).await?;
        let (depth, base) = chain(&all, parent);
        let flat;
        let parent = if depth > MAX_LAYERS {
            let key = super::keys::flat(&bot.name, &op.id);
            let labels = super::snapshot::hidden_labels(&bot.name, KIND_FLAT, &op.id);
            tracing::info!(bot.name = %bot.name, snapshot = parent, layers = depth, "flattening a deep snapshot");
            flat = self.runtime.flatten_snapshot(parent, &base, &key, labels).await?.key;
            flat.as_str()
        } else {
            parent
        };
        let new = super::keys::active(&bot.name, &op.id);
        let labels: HashMap<String, String> = [
            (LABEL_BOT.to_string(), bot.name.clone()),
            (LABEL_KIND.to_string(), KIND_ACTIVE.to_string()),
            (LABEL_OP.to_string(), op.id.clone()),
        ]
        .into();
        self.store.op_detail(&op.id, &serde_json::json!({ "new": new })).await?;
        self.runtime.prepare_snapshot(&new, parent, labels).await?;
        Ok(new)
    }

    /// Moves the bot onto writable snapshot `new` (see the module docs). On failure the bot keeps its old
    /// data, `new` is removed, and a bot that was running runs again.
    pub(super) async fn switch_active(&self, bot: &BotRecord, new: &str, op: &Operation) -> Result<()> {
        let old = self.runtime.container_snapshot(&bot.container_id).await?;
        self.store.op_detail(&op.id, &serde_json::json!({ "new": new, "old": old })).await?;
        let running = matches!(self.runtime.state(&bot.container_id).await?, TaskState::Running { .. });
        let switched = async {
            if running {
                self.stop_locked(bot, None).await?;
            }
            self.runtime.set_container_snapshot(&bot.container_id, new).await?;
            Ok::<_, crate::error::Error>(())
        }
        .await;
        if let Err(e) = switched {
            if let Err(r) = self.runtime.remove_snapshot(new).await {
                tracing::warn!(bot.name = %bot.name, snapshot = new, error = %crate::error::chain(&r), "failed to remove an unused snapshot");
            }
            if running && let Err(s) = self.start_locked(bot, Fresh::No).await {
                tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&s), "failed to restart the bot on its old data");
            }
            return Err(e);
        }
        self.discard_active(&bot.name, &old).await;
        // The old writable snapshot may have been the last thing layered on deleted snapshots.
        if let Err(e) = self.sweep_snapshots(&bot.name).await {
            tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&e), "failed to sweep snapshots");
        }
        if running {
            self.start_locked(bot, Fresh::No).await?;
        }
        Ok(())
    }

    /// Removes a writable snapshot the user asked to replace; if that fails, marks it so recovery removes
    /// it instead of mistaking it for lost data.
    pub(super) async fn discard_active(&self, bot: &str, key: &str) {
        if let Err(e) = self.runtime.remove_snapshot(key).await {
            tracing::warn!(bot.name = bot, snapshot = key, error = %crate::error::chain(&e), "failed to remove a replaced snapshot; marking it");
            let label = [(LABEL_DISCARD.to_string(), "true".to_string())].into();
            if let Err(e) = self.runtime.label_snapshot(key, label).await {
                tracing::warn!(bot.name = bot, snapshot = key, error = %crate::error::chain(&e), "failed to mark a replaced snapshot");
            }
        }
    }
}

/// How many of the bot's own snapshots (`all`) `key` and its ancestors are, and the first ancestor that
/// is not one of them (the image's top layer, or `""`).
fn chain(all: &[SnapshotInfo], key: &str) -> (usize, String) {
    let mut depth = 0;
    let mut at = key;
    // Bounded by the number of snapshots, whatever their labels say.
    while depth <= all.len() {
        match all.iter().find(|s| s.key == at) {
            Some(s) => {
                depth += 1;
                at = &s.parent;
            }
            None => break,
        }
    }
    (depth, at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(key: &str, parent: &str) -> SnapshotInfo {
        SnapshotInfo {
            key: key.into(),
            parent: parent.into(),
            committed: true,
            created_at_ms: 0,
            labels: HashMap::new(),
        }
    }

    #[test]
    fn chain_counts_the_bots_own_layers_down_to_the_image() {
        let all = [snap("c", "b"), snap("b", "a"), snap("a", "image"), snap("x", "a")];
        assert_eq!(chain(&all, "c"), (3, "image".to_string()));
        assert_eq!(chain(&all, "a"), (1, "image".to_string()));
        assert_eq!(chain(&all, "image"), (0, "image".to_string()));
        // A cycle (impossible in containerd) cannot loop for ever.
        let cyc = [snap("p", "q"), snap("q", "p")];
        assert!(chain(&cyc, "p").0 <= 3);
    }
}
