//! Start-up recovery (the reconcile loop, reconcile.rs, does the rest): a bot recorded as
//! running or in transition whose task is not running is recorded as stopped, with the reason, so the
//! state berthd reports is never a lie.

use super::BotManager;
use super::Platform;
use super::model::BotState;
use crate::error::Result;
use crate::network::Network;
use crate::runtime::{ContainerRuntime, TaskState};

/// The addresses and egress policies of the bots that have an address.
pub(super) fn egress_of(bots: &[super::model::BotRecord]) -> Vec<crate::network::BotEgress> {
    bots.iter()
        .filter_map(|b| {
            let ip = b.network.as_ref()?.ip.clone();
            Some(crate::network::BotEgress { ip, egress: b.egress.clone() })
        })
        .collect()
}

impl<P: Platform> BotManager<P> {
    /// Installs the host firewall rules the bots' network needs (at start: an error here stops berthd,
    /// since bots would run without what the operator asked for). Returns what was changed.
    pub async fn ensure_network_rules(&self) -> Result<Vec<String>> {
        let bots = self.all_bots().await?;
        Ok(self.network.ensure_rules(&egress_of(&bots)).await?)
    }

    /// Sets a bot's egress policy and applies it at once.
    pub async fn set_egress(&self, name: &str, egress: crate::network::Egress) -> Result<super::model::BotRecord> {
        self.own_bot(name).await?;
        self.store.set_egress(name, &egress).await?;
        self.ensure_network_rules().await?;
        Ok(self.store.get_bot(name).await?)
    }

    /// Checks every bot against its task. Returns how many records were corrected.
    pub async fn recover(&self) -> Result<usize> {
        let mut fixed = 0;
        let mut pages = self.own_bots();
        while let Some(page) = pages.next().await? {
            for bot in page {
                let task = self.runtime.state(&bot.container_id).await?;
                let running = matches!(task, TaskState::Running { .. });
                let (state, kind, msg) = match (bot.state, running) {
                    (BotState::Running, true) | (BotState::Stopped, false) | (BotState::Error, _) => continue,
                    (BotState::Starting | BotState::Stopping | BotState::Creating | BotState::Deleting, true) => {
                        (BotState::Running, "adopted", "its task was running when berthd started")
                    }
                    (_, false) => (BotState::Stopped, "recovered", "its task was not running when berthd started"),
                    (BotState::Stopped, true) => {
                        (BotState::Running, "adopted", "its task was running when berthd started")
                    }
                };
                if let TaskState::Stopped { .. } = task {
                    // A dead task would block the next start; it has nothing left to report.
                    self.runtime.stop(&bot.container_id, std::time::Duration::from_secs(1)).await?;
                }
                self.transition(&bot, state, kind, msg).await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }
}
