//! Deleting a bot: its task, container and snapshot, its agent directory, then its record.

use super::model::BotState;
use super::{BotManager, lock};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::runtime::ContainerRuntime;

impl<R: ContainerRuntime, N: Network> BotManager<R, N> {
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn delete(&self, name: &str) -> Result<()> {
        let bot_lock = self.bot_lock(name);
        let guard = bot_lock.lock().await;
        let bot = self.store.get_bot(name).await?;
        self.transition(&bot, BotState::Deleting, "deleting", "").await?;
        self.evict_agent(name);
        if let Err(e) = self.runtime.delete(&bot.container_id).await {
            let err = Error::from(e);
            self.transition(&bot, BotState::Error, "error", &format!("delete failed: {}", crate::error::chain(&err)))
                .await?;
            return Err(err);
        }
        if let Err(e) = self.network.detach(name, bot.network.as_ref()).await {
            let reason = format!("delete failed: removing its network: {}", crate::error::chain(&e));
            self.transition(&bot, BotState::Error, "error", &reason).await?;
            return Err(Error::Unavailable(reason));
        }
        let dir = self.bot_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::internal(format!("cannot remove {}", dir.display()), e));
        }
        self.store.delete_bot(name).await?;
        self.announce(name, BotState::Deleting, "deleted", "").await;
        drop(guard);
        lock(&self.locks).remove(name);
        Ok(())
    }
}
