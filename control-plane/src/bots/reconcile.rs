//! The reconcile loop: at start and then periodically, every bot the user wants running is compared with
//! what runs, and converged. A task that died (crash, OOM kill, killed agent, lost shim) is restarted with
//! exponential backoff, its exit reason recorded on the bot (`last_exit`, `restart_count`, and `error`
//! while it waits, so a crash loop is visible, never hidden); an agent that stops answering health checks
//! (frozen, wedged) is restarted after three misses; a running bot's network is checked and repaired
//! without changing its address (see [`Network::repair`]). Bots busy with an operation are skipped until
//! the next round. Every repair is logged and announced as an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BotManager;
use super::Platform;
use super::model::{BotRecord, BotState};
use super::start::Fresh;
use crate::agent_client::BotAgent;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::runtime::{ContainerRuntime, TaskState};

/// Health checks an agent may miss before its bot is restarted.
const AGENT_MISSES: u32 = 3;
/// Deadline of one agent health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// First restart delay after a crash; doubled per consecutive crash up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Running healthily this long forgives earlier crashes.
const STABLE_AFTER: Duration = Duration::from_secs(120);

/// Per-bot supervision state (in memory: after a berthd restart, backoff starts afresh).
#[derive(Debug, Default)]
pub(super) struct Supervision {
    crashes: u32,
    next_restart: Option<Instant>,
    restarted_at: Option<Instant>,
    agent_misses: u32,
    /// The bot's OOM kill count when last looked at (None: not yet seen since berthd started).
    oom_seen: Option<u64>,
}

/// What one reconcile pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    pub restarted: Vec<String>,
    pub repaired: Vec<String>,
    pub skipped_busy: usize,
}

/// Why a task ended, in words.
pub fn describe_exit(exit_status: Option<u32>, oom_kills: Option<u64>) -> String {
    match (exit_status, oom_kills) {
        (Some(s), Some(n)) if n > 0 => format!("killed by the kernel's OOM killer (exit status {s})"),
        (Some(s), _) if s > 128 => format!("killed by signal {} (exit status {s})", s - 128),
        (Some(s), _) => format!("exited with status {s}"),
        (None, _) => "its task disappeared (its shim may have died)".to_string(),
    }
}

impl<P: Platform> BotManager<P> {
    /// Runs [`BotManager::reconcile`] every `every` until `stop` turns true.
    pub fn spawn_reconciler(
        self: &Arc<Self>,
        every: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        super::spawn_every(every, stop, move || {
            let m = m.clone();
            async move {
                let pass = m.reconcile().await;
                if pass.is_ok() {
                    crate::metrics::metrics().reconcile_passes.inc();
                }
                match pass {
                    Ok(r) if !r.restarted.is_empty() || !r.repaired.is_empty() => {
                        tracing::info!(restarted = ?r.restarted, repaired = ?r.repaired, "reconciled");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %crate::error::chain(&e), "reconcile pass failed"),
                }
            }
        })
    }

    /// One pass over every bot, then over the address leases.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let mut known = Vec::new();
        let mut pages = self.own_bots();
        while let Some(page) = pages.next().await? {
            known.extend(page.iter().map(|b| b.name.clone()));
            for bot in &page {
                if !bot.desired_running {
                    continue;
                }
                let bot_lock = self.bot_lock(&bot.name);
                let Ok(_guard) = bot_lock.try_lock() else {
                    report.skipped_busy += 1;
                    continue;
                };
                report.checked += 1;
                let Ok(bot) = self.store.get_bot(&bot.name).await else { continue };
                if let Err(e) = self.reconcile_bot(&bot, &mut report).await {
                    tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&e), "could not reconcile bot");
                }
            }
        }
        let egress = match self.all_bots().await {
            Ok(bots) => super::recover::egress_of(&bots),
            Err(e) => return Err(e),
        };
        match self.network.ensure_rules(&egress).await {
            Ok(changed) => {
                for c in changed {
                    tracing::warn!(change = %c, "restored the bots' firewall rules");
                    crate::metrics::metrics().repaired("firewall");
                    report.repaired.push(c);
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "could not check the firewall rules"),
        }
        match self.network.release_leaked(&known).await {
            Ok(released) => {
                for r in released {
                    tracing::warn!(lease = %r, "released an address leased to no bot");
                    crate::metrics::metrics().repaired("lease");
                    report.repaired.push(format!("released address {r}"));
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "could not sweep address leases"),
        }
        Ok(report)
    }

    /// Converges one bot the user wants running; the caller holds its lock.
    async fn reconcile_bot(&self, bot: &BotRecord, report: &mut ReconcileReport) -> Result<()> {
        if !matches!(bot.state, BotState::Running | BotState::Stopped | BotState::Error) {
            return Ok(());
        }
        match self.runtime.state(&bot.container_id).await? {
            TaskState::Running { pid } => {
                if let Some(a) = &bot.network {
                    match self.network.repair(&bot.name, a, pid).await {
                        Ok(done) if done.is_empty() => {}
                        Ok(done) => {
                            let what = done.join("; ");
                            tracing::warn!(bot.name = %bot.name, repairs = %what, "repaired the bot's network");
                            crate::metrics::metrics().repaired("network");
                            self.announce(&bot.name, bot.state, "repaired", &what);
                            report.repaired.push(format!("{}: {what}", bot.name));
                        }
                        Err(e) => {
                            tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&e), "network repair failed")
                        }
                    }
                }
                self.note_oom_kills(bot).await;
                match self.health(bot).await {
                    Ok(()) => {
                        {
                            let mut sup = super::lock(&self.supervision);
                            let s = sup.entry(bot.name.clone()).or_default();
                            s.agent_misses = 0;
                            if s.restarted_at.is_some_and(|t| t.elapsed() > STABLE_AFTER) {
                                *s = Supervision::default();
                            }
                        }
                        if bot.state != BotState::Running {
                            self.transition(bot, BotState::Running, "recovered", "its task and agent are healthy")
                                .await?;
                        }
                    }
                    Err(e) => {
                        let misses = {
                            let mut sup = super::lock(&self.supervision);
                            let s = sup.entry(bot.name.clone()).or_default();
                            s.agent_misses += 1;
                            s.agent_misses
                        };
                        tracing::warn!(bot.name = %bot.name, misses, error = %crate::error::chain(&e), "agent health check failed");
                        if misses >= AGENT_MISSES {
                            let reason =
                                format!("its agent missed {misses} health checks ({})", crate::error::chain(&e));
                            crate::metrics::metrics().restarted("agent_unresponsive");
                            self.restart(bot, &reason, report).await?;
                        }
                    }
                }
            }
            TaskState::Stopped { exit_status } => {
                let reason = describe_exit(Some(exit_status), self.runtime.oom_kills(&bot.container_id).await);
                self.after_death(bot, &reason, report).await?;
            }
            TaskState::NoTask => {
                let reason = describe_exit(None, None);
                self.after_death(bot, &reason, report).await?;
            }
        }
        Ok(())
    }

    /// Announces kills by the kernel's OOM killer in a running bot since the last pass (an `oom_kill`
    /// event), whatever process they hit: a server, an exec, something in the background. The count is
    /// the bot cgroup's own (`memory.events`), so a bot cannot fake or hide one. Kills before berthd's
    /// first look after a start are not announced (the first look sets the baseline).
    async fn note_oom_kills(&self, bot: &BotRecord) {
        let Some(now) = self.runtime.oom_kills(&bot.container_id).await else { return };
        let before = {
            let mut sup = super::lock(&self.supervision);
            let s = sup.entry(bot.name.clone()).or_default();
            s.oom_seen.replace(now)
        };
        if let Some(before) = before
            && now > before
        {
            let n = now - before;
            let message = format!(
                "the kernel's OOM killer killed {n} process{} in the bot: it reached its memory limit (raise it \
                 with `berth bot create --memory`, or run less at once)",
                if n == 1 { "" } else { "es" }
            );
            crate::metrics::metrics().oom_killed(n);
            self.announce(&bot.name, bot.state, "oom_kill", &message);
        }
    }

    /// A dead task: record why, then restart now or report the wait.
    async fn after_death(&self, bot: &BotRecord, reason: &str, report: &mut ReconcileReport) -> Result<()> {
        if bot.last_exit != reason || bot.state == BotState::Running {
            self.store.set_last_exit(&bot.name, reason).await?;
        }
        let wait = {
            let sup = super::lock(&self.supervision);
            sup.get(&bot.name).and_then(|s| s.next_restart).filter(|t| *t > Instant::now())
        };
        match wait {
            Some(t) => {
                let msg = format!(
                    "crash loop: {reason}; restarted {} times; next restart in {} s",
                    bot.restart_count,
                    t.saturating_duration_since(Instant::now()).as_secs().max(1)
                );
                if bot.state != BotState::Error || bot.last_error != msg {
                    self.transition(bot, BotState::Error, "crashed", &msg).await?;
                }
                Ok(())
            }
            None => {
                crate::metrics::metrics().restarted("task_exited");
                self.restart(bot, reason, report).await
            }
        }
    }

    /// Restarts the bot's task (removing the dead or stuck one first), counting it and arming the backoff.
    async fn restart(&self, bot: &BotRecord, reason: &str, report: &mut ReconcileReport) -> Result<()> {
        tracing::warn!(bot.name = %bot.name, reason, "restarting the bot");
        self.evict_agent(&bot.name);
        {
            let mut sup = super::lock(&self.supervision);
            let s = sup.entry(bot.name.clone()).or_default();
            s.crashes += 1;
            let delay = FIRST_BACKOFF.saturating_mul(1 << (s.crashes - 1).min(16)).min(MAX_BACKOFF);
            s.next_restart = Some(Instant::now() + delay);
            s.restarted_at = Some(Instant::now());
            s.agent_misses = 0;
        }
        self.runtime.stop(&bot.container_id, Duration::from_secs(1)).await?;
        self.start_locked(bot, Fresh::No).await?;
        self.transition(bot, BotState::Running, "restarted", reason).await?;
        report.restarted.push(bot.name.clone());
        Ok(())
    }

    /// The agent answers `Version` within [`HEALTH_TIMEOUT`].
    async fn health(&self, bot: &BotRecord) -> Result<()> {
        let check = async {
            let c = self.connect_agent(bot).await?;
            c.version().await?;
            Ok::<_, Error>(())
        };
        tokio::time::timeout(HEALTH_TIMEOUT, check)
            .await
            .map_err(|_| Error::Unavailable(format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())))?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_reasons() {
        assert_eq!(super::describe_exit(Some(137), Some(1)), "killed by the kernel's OOM killer (exit status 137)");
        assert_eq!(super::describe_exit(Some(137), Some(0)), "killed by signal 9 (exit status 137)");
        assert_eq!(super::describe_exit(Some(3), None), "exited with status 3");
        assert!(super::describe_exit(None, None).contains("disappeared"));
    }
}
