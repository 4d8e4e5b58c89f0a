//! Start-up settlement of what a crash interrupted: operations left `running` are marked finished or
//! failed according to what containerd shows (the container's snapshot key says whether a rollback or
//! import took effect), their leftovers are removed, tasks frozen by a capture are thawed, stale snapshot
//! mounts are detached, and partial archives are deleted. The bot's data is never touched.

use super::BotManager;
use super::Platform;
use super::model::BotState;
use super::ops::{OpState, Operation};
use crate::error::Result;
use crate::runtime::ContainerRuntime;

impl<P: Platform> BotManager<P> {
    /// Settles every operation a crash left running. Returns how many there were.
    pub async fn settle_operations(&self) -> Result<usize> {
        self.clear_mounts();
        self.clear_partial_archives();
        let _ = std::fs::remove_dir_all(self.config.state_dir.join("spool"));
        let ops = self.store.running_ops().await?;
        for op in &ops {
            let (state, error) = self.settle(op).await;
            self.store.finish_op(&op.id, state, &op.target, &error).await?;
            tracing::warn!(op.id = %op.id, op.kind = %op.kind, bot.name = %op.bot, state = state.as_str(), error, "settled an interrupted operation");
            if let Err(e) = self.sweep_snapshots(&op.bot).await {
                tracing::warn!(bot.name = %op.bot, error = %crate::error::chain(&e), "failed to sweep snapshots");
            }
        }
        let mut pages = self.own_bots();
        while let Some(page) = pages.next().await? {
            for bot in &page {
                if let Err(e) = self.runtime.thaw(&bot.container_id).await {
                    tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&e), "failed to thaw the bot's task");
                }
            }
        }
        Ok(ops.len())
    }

    /// What became of one interrupted operation, cleaning up after it.
    async fn settle(&self, op: &Operation) -> (OpState, String) {
        let interrupted = "berthd stopped during the operation";
        let snap_key = super::keys::snapshot(&op.bot, &op.id);
        match op.kind.as_str() {
            "snapshot" => match self.runtime.snapshot(&snap_key).await {
                Ok(s) if s.committed => (OpState::Succeeded, String::new()),
                _ => (OpState::Failed, format!("{interrupted}; no snapshot was made")),
            },
            "rollback" | "import" | "restore" => {
                let new = op.detail.get("new").and_then(|v| v.as_str()).unwrap_or("").to_string();
                let old = op.detail.get("old").and_then(|v| v.as_str()).unwrap_or("").to_string();
                let current = match self.store.get_bot(&op.bot).await {
                    Ok(bot) => self.runtime.container_snapshot(&bot.container_id).await.ok(),
                    Err(_) => None,
                };
                if !new.is_empty() && current.as_deref() == Some(new.as_str()) {
                    if !old.is_empty() {
                        self.discard_active(&op.bot, &old).await;
                    }
                    (OpState::Succeeded, format!("{interrupted} after the switch; the bot is on the new data"))
                } else {
                    if !new.is_empty() {
                        self.remove_leftover(&op.bot, &new).await;
                    }
                    if op.kind == "import" {
                        self.remove_leftover(&op.bot, &snap_key).await;
                    }
                    if op.kind == "restore" {
                        // A bot whose restore never finished must not pass for one with its data.
                        if let Ok(bot) = self.store.get_bot(&op.bot).await {
                            let reason = "restoring its kept data was interrupted by a berthd restart; the kept \
                                          archive is untouched: delete the bot and create it again with restore";
                            if let Err(e) = self.transition(&bot, BotState::Error, "error", reason).await {
                                tracing::warn!(bot.name = %op.bot, error = %crate::error::chain(&e), "failed to mark an unrestored bot");
                            }
                        }
                    }
                    (OpState::Failed, format!("{interrupted}; it had not taken effect and the bot's data is unchanged"))
                }
            }
            _ => {
                self.remove_leftover(&op.bot, &super::keys::export(&op.bot, &op.id)).await;
                (OpState::Failed, interrupted.to_string())
            }
        }
    }

    async fn remove_leftover(&self, bot: &str, key: &str) {
        if let Err(e) = self.runtime.remove_snapshot(key).await {
            tracing::warn!(bot.name = bot, snapshot = key, error = %crate::error::chain(&e), "failed to remove an interrupted operation's snapshot");
        }
    }

    /// Detaches and removes mount points a crash left under `<state>/mnt`.
    fn clear_mounts(&self) {
        let dir = self.config.state_dir.join("mnt");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
            if let Err(err) = std::fs::remove_dir(&p) {
                tracing::warn!(path = %p.display(), error = %err, "failed to remove a stale mount point");
            }
        }
    }

    fn clear_partial_archives(&self) {
        let Ok(entries) = std::fs::read_dir(self.archive_dir()) else { return };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "partial") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
