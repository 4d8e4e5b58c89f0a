//! Rolling a bot back in place to one of its snapshots, and the switch it shares with import: a new
//! writable snapshot is prepared on the target first; only then is the bot stopped (if running), its
//! container pointed at the new snapshot, the old writable layer discarded (the user asked to replace
//! it) and the bot started again. The operation row records both keys before the switch, so a berthd
//! killed half-way settles it on restart: the container's snapshot key says which side won.

use std::collections::HashMap;

use super::BotManager;
use super::model::BotRecord;
use super::ops::Operation;
use super::snapshot::LABEL_OP;
use super::start::Fresh;
use crate::error::Result;
use crate::network::Network;
use crate::runtime::{ContainerRuntime, KIND_ACTIVE, LABEL_BOT, LABEL_KIND, TaskState};

/// Label marking a writable snapshot a user asked to discard (removed by recovery if removal failed).
pub const LABEL_DISCARD: &str = "io.berth.discard";

impl<R: ContainerRuntime, N: Network> BotManager<R, N> {
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

    /// Prepares a new writable snapshot for the bot on `parent`, named after the operation.
    pub(super) async fn prepare_active(&self, bot: &BotRecord, parent: &str, op: &Operation) -> Result<String> {
        let new = format!("berth.{}.active.{}", bot.name, op.id);
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
