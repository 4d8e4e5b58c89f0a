//! Reading bots: one by name (with its task's pid), or a filtered page.

use std::collections::BTreeMap;

use super::BotManager;
use super::Platform;
use super::model::BotRecord;
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, TaskState};

/// How long each of readiness's checks may take (a hung dependency is "not ready", not a hung probe).
pub const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Bots per page when the caller gives no size.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

impl<P: Platform> BotManager<P> {
    /// The bot and, if its task runs, the task's pid.
    pub async fn get(&self, name: &str) -> Result<(BotRecord, Option<u32>)> {
        let bot = self.store.get_bot(name).await?;
        let pid = match self.runtime.state(&bot.container_id).await {
            Ok(TaskState::Running { pid }) => Some(pid),
            _ => None,
        };
        Ok((bot, pid))
    }

    /// How many of the bot's processes the kernel's OOM killer has killed (its container cgroup's counter,
    /// which counts the user cgroup below it too); `None` when unknown.
    pub async fn oom_kills(&self, name: &str) -> Option<u64> {
        let bot = self.store.get_bot(name).await.ok()?;
        self.runtime.oom_kills(&bot.container_id).await
    }

    /// What the bot's writable layer holds and whether its disk limit is enforced.
    /// Informational: a bot without a container (a failed create) or a runtime that cannot tell reads as
    /// nothing known, never as a failed `GetBot`.
    pub async fn disk_usage(&self, bot: &BotRecord) -> crate::runtime::DiskUsage {
        match self.runtime.disk_usage(&bot.container_id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(bot.name = %bot.name, error = %crate::error::chain(&e), "disk usage unknown");
                crate::runtime::DiskUsage::default()
            }
        }
    }

    /// A page of bots whose labels include `selector`, after `page_token` (a bot name).
    /// Ready to serve: the database and the runtime answer, each within [`READY_DEADLINE`].
    pub async fn ready(&self) -> Result<()> {
        let hung =
            |what: &str| Error::Unavailable(format!("{what} did not answer within {} s", READY_DEADLINE.as_secs()));
        tokio::time::timeout(READY_DEADLINE, self.store.list_bots("", 1, None))
            .await
            .map_err(|_| hung("the database"))??;
        tokio::time::timeout(READY_DEADLINE, self.runtime.ping()).await.map_err(|_| hung("containerd"))??;
        Ok(())
    }

    /// Every bot this node owns (for counts and health; the API pages with [`list`](Self::list)).
    pub async fn all_bots(&self) -> Result<Vec<BotRecord>> {
        let mut all = Vec::new();
        let mut pages = self.own_bots();
        while let Some(page) = pages.next().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// How many bots are in each state (every state, zero included).
    pub async fn count_by_state(&self) -> Result<Vec<(&'static str, i64)>> {
        use super::model::BotState as S;
        let states = [S::Creating, S::Stopped, S::Starting, S::Running, S::Stopping, S::Deleting, S::Error];
        let mut counts: Vec<(&'static str, i64)> = states.iter().map(|s| (s.as_str(), 0)).collect();
        for b in self.all_bots().await? {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == b.state.as_str()) {
                c.1 += 1;
            }
        }
        Ok(counts)
    }

    pub async fn list(
        &self,
        selector: &BTreeMap<String, String>,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<BotRecord>, String)> {
        let size = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size.min(1000) } as usize;
        let mut out = Vec::new();
        // Without a selector the page is the next `size` bots (and one to know whether more follow).
        let mut pages = if selector.is_empty() {
            self.store.bot_pages_of(page_token, size as u32 + 1)
        } else {
            self.store.bot_pages(page_token)
        };
        while let Some(batch) = pages.next().await? {
            for b in batch {
                if selector.iter().all(|(k, v)| b.labels.get(k) == Some(v)) {
                    if out.len() == size {
                        let token = out.last().map(|b: &BotRecord| b.name.clone()).unwrap_or_default();
                        return Ok((out, token));
                    }
                    out.push(b);
                }
            }
        }
        Ok((out, String::new()))
    }
}
