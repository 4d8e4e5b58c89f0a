//! Deleting a bot: its task, container and every snapshot of it, its agent directory, then its record.
//! With `keep_data`, its `/data` is first written to its kept archive; if that fails nothing is deleted.

use super::Platform;
use super::model::BotState;
use super::{BotManager, lock};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::runtime::ContainerRuntime;

impl<P: Platform> BotManager<P> {
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn delete(&self, name: &str, keep_data: bool) -> Result<()> {
        let bot_lock = self.bot_lock(name);
        let guard = bot_lock.lock().await;
        let bot = self.own_bot(name).await?;
        if keep_data {
            let path = self.keep_data(&bot).await.map_err(|e| {
                Error::FailedPrecondition(format!(
                    "bot `{name}` was not deleted: keeping its data failed: {}",
                    crate::error::chain(&e)
                ))
            })?;
            tracing::info!(bot.name = name, archive = %path.display(), "kept the bot's data");
        }
        self.transition(&bot, BotState::Deleting, "deleting", "").await?;
        self.evict_agent(name);
        if let Err(e) = self.runtime.delete(&bot.container_id).await {
            let err = Error::from(e);
            self.transition(&bot, BotState::Error, "error", &format!("delete failed: {}", crate::error::chain(&err)))
                .await?;
            return Err(err);
        }
        if let Err(e) = self.remove_all_snapshots(name).await {
            let reason = format!("delete failed: removing its snapshots: {}", crate::error::chain(&e));
            self.transition(&bot, BotState::Error, "error", &reason).await?;
            return Err(e);
        }
        if let Err(e) = self.network.detach(name, bot.network.as_ref()).await {
            let reason = format!("delete failed: removing its network: {}", crate::error::chain(&e));
            self.transition(&bot, BotState::Error, "error", &reason).await?;
            return Err(Error::Unavailable(reason));
        }
        self.remove_bot_dir(name).await?;
        self.store.delete_bot(name).await?;
        self.announce(name, BotState::Deleting, "deleted", "");
        drop(guard);
        lock(&self.locks).remove(name);
        Ok(())
    }

    /// Removes the bot's agent directory. Its socket directory is its own file system: detached, never
    /// walked.
    pub(super) async fn remove_bot_dir(&self, name: &str) -> Result<()> {
        let dir = self.bot_dir(name);
        let root = dir.root().display().to_string();
        match tokio::task::spawn_blocking(move || dir.remove()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::internal(format!("cannot remove {root}"), e)),
            Err(e) => Err(Error::internal(format!("cannot remove {root}"), std::io::Error::other(e))),
        }
    }

    /// Removes every snapshot labelled as the bot's, children before parents.
    pub(super) async fn remove_all_snapshots(&self, name: &str) -> Result<()> {
        loop {
            let all = self.runtime.snapshots(crate::runtime::LABEL_BOT, name).await?;
            if all.is_empty() {
                return Ok(());
            }
            let mut removed = 0;
            for s in all.iter().filter(|s| !all.iter().any(|c| c.parent == s.key)) {
                match self.runtime.remove_snapshot(&s.key).await {
                    Ok(()) => removed += 1,
                    Err(crate::runtime::RuntimeError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if removed == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "bot `{name}` still has {} snapshots that something else is layered on",
                    all.len()
                )));
            }
        }
    }
}
