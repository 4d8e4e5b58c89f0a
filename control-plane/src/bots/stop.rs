//! Stopping a bot: SIGTERM to its task, SIGKILL to every process after the timeout, task removed.

use std::time::Duration;

use super::BotManager;
use super::Platform;
use super::model::{BotRecord, BotState};
use crate::error::{Error, Result};
use crate::runtime::ContainerRuntime;

impl<P: Platform> BotManager<P> {
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn stop(&self, name: &str, timeout: Option<Duration>) -> Result<BotRecord> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.own_bot(name).await?;
        self.store.set_desired(name, false).await?;
        match bot.state {
            BotState::Running | BotState::Error | BotState::Starting | BotState::Stopping => {}
            BotState::Stopped => return Ok(bot),
            s => {
                return Err(Error::FailedPrecondition(format!("bot `{name}` is {}; it cannot be stopped", s.as_str())));
            }
        }
        self.stop_locked(&bot, timeout).await?;
        Ok(self.store.get_bot(name).await?)
    }

    /// Stops the bot's task; the caller holds the bot lock.
    pub(super) async fn stop_locked(&self, bot: &BotRecord, timeout: Option<Duration>) -> Result<()> {
        self.transition(bot, BotState::Stopping, "stopping", "").await?;
        self.evict_agent(&bot.name);
        let grace = timeout.unwrap_or(self.config.stop_timeout);
        match self.runtime.stop(&bot.container_id, grace).await {
            Ok(status) => {
                let msg = status.map(|s| format!("exit status {s}")).unwrap_or_default();
                self.transition(bot, BotState::Stopped, "stopped", &msg).await
            }
            Err(e) => {
                let err = Error::from(e);
                self.transition(bot, BotState::Error, "error", &format!("stop failed: {}", crate::error::chain(&err)))
                    .await?;
                Err(err)
            }
        }
    }
}
