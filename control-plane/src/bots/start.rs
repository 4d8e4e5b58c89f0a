//! Starting a bot: its task, then readiness = its agent answering (with a deadline). A failure stops what
//! was started and leaves the bot in `error` with the reason.

use std::time::Instant;

use super::BotManager;
use super::Platform;
use super::model::{BotRecord, BotState};
use crate::agent_client::BotAgent;
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, TaskState};

impl<P: Platform> BotManager<P> {
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn start(&self, name: &str) -> Result<BotRecord> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.own_bot(name).await?;
        // The user wants it running from now on: if this start fails, the reconciler retries with backoff.
        if !bot.desired_running && matches!(bot.state, BotState::Stopped | BotState::Error | BotState::Running) {
            self.store.set_desired(name, true).await?;
        }
        match bot.state {
            BotState::Stopped | BotState::Error => {}
            BotState::Running => return Ok(bot),
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "bot `{name}` is {}; it can be started when stopped",
                    s.as_str()
                )));
            }
        }
        self.start_locked(&bot, Fresh::No).await?;
        Ok(self.store.get_bot(name).await?)
    }

    /// Starts the bot's task and waits for its agent; the caller holds the bot lock. A task that is not
    /// running already gets a new agent token (recorded, then written for the agent to read at start), so
    /// a token seen by anything in an earlier run of the bot is worthless afterwards. A bot created a
    /// moment ago under the same lock ([`Fresh::Yes`]) has no task yet and a token nothing has seen, so
    /// neither is looked at again.
    pub(super) async fn start_locked(&self, bot: &BotRecord, fresh: Fresh) -> Result<()> {
        let name = bot.name.as_str();
        self.transition(bot, BotState::Starting, "starting", "").await?;
        self.evict_agent(name);
        let mut bot = bot.clone();
        let started = async {
            if self.bot_dir(name).is_old_layout() {
                return Err(Error::FailedPrecondition(format!(
                    "bot `{name}` was created by an older berthd, whose agent directory its bot could write; \
                     re-create it to start it: berth bot rm --keep-data {name}; berth bot create {name} --restore"
                )));
            }
            let running_already =
                fresh == Fresh::No && matches!(self.runtime.state(&bot.container_id).await?, TaskState::Running { .. });
            if fresh == Fresh::No && !running_already {
                let token = super::new_token();
                self.store.set_token(name, &token).await?;
                // Again, now that the old token is gone: a connection made with it since the first is dropped.
                self.evict_agent(name);
                let dir = self.bot_dir(name);
                dir.reset_sock()
                    .map_err(|e| Error::internal(format!("cannot reset the agent sockets of `{name}`"), e))?;
                dir.write_token(&token)
                    .map_err(|e| Error::internal(format!("cannot write the agent token of bot `{name}`"), e))?;
                bot.token = token;
            }
            let log_from = self.runtime.task_log_len(&bot.container_id);
            let started = self.runtime.start(&bot.container_id).await?;
            protect_agent(name, started.pid);
            // A task this start created waits for its user cgroup; one found running has it already.
            let procs = if started.created { self.runtime.user_cgroup_procs(&bot.container_id)? } else { Vec::new() };
            self.wait_ready(&bot, log_from, procs).await
        }
        .await;
        let bot = &bot;
        if let Err(e) = started {
            let reason = format!("start failed: {}", crate::error::chain(&e));
            if let Err(stop_err) = self.runtime.stop(&bot.container_id, self.config.stop_timeout).await {
                tracing::warn!(bot.name = name, error = %crate::error::chain(&stop_err), "cleanup after a failed start failed");
            }
            self.transition(bot, BotState::Error, "error", &reason).await?;
            return Err(e);
        }
        self.transition(bot, BotState::Running, "started", "").await
    }

    /// Hands the agent its user cgroup (`procs`, when not empty), then waits until it answers `Version`,
    /// all within the configured deadline. An agent that exits instead (a bad image, an agent too old for
    /// its flags) ends the wait at once, with what it printed.
    async fn wait_ready(&self, bot: &BotRecord, log_from: u64, procs: Vec<std::os::fd::OwnedFd>) -> Result<()> {
        let started_at = Instant::now();
        let deadline = started_at + self.config.agent_ready_timeout;
        let mut last = String::from("no answer yet");
        let mut next_check = Instant::now();
        let mut procs = (!procs.is_empty()).then_some(procs);
        while Instant::now() < deadline {
            // Every step is bounded by what is left of the deadline: a hostile agent (the bot can replace
            // the binary) may accept and never answer.
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(fds) = &procs {
                match tokio::time::timeout(left, self.bot_dir(&bot.name).hand_over_cgroup(fds)).await {
                    Ok(Ok(())) => procs = None,
                    Ok(Err(e)) => last = format!("user cgroup handoff: {e}"),
                    Err(_) => last = "user cgroup handoff: no answer".into(),
                }
            } else {
                let answer = tokio::time::timeout(left, async {
                    let c = self.connect_agent(bot).await.map_err(|e| e.to_string())?;
                    c.version().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(c)
                });
                match answer.await {
                    Ok(Ok(c)) => {
                        super::lock(&self.agents).insert(bot.name.clone(), c);
                        return Ok(());
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "no answer".into(),
                }
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + std::time::Duration::from_millis(100);
                if let TaskState::Stopped { exit_status } = self.runtime.state(&bot.container_id).await? {
                    // The shim copies the task's output to the log on its own, and may lag the exit: wait
                    // (up to 2 s, only on this failure path) until something arrived and stopped changing.
                    let mut said = self.runtime.task_log_tail(&bot.container_id, log_from, 2048);
                    for _ in 0..40 {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let again = self.runtime.task_log_tail(&bot.container_id, log_from, 2048);
                        if again == said && said.is_some() {
                            break;
                        }
                        said = again;
                    }
                    return Err(Error::FailedPrecondition(format!(
                        "the agent of bot `{}` exited (status {exit_status}) instead of serving; it said: {}",
                        bot.name,
                        // The agent's words are the bot's: shown, not replayed to a terminal.
                        said.as_deref().map_or_else(|| "nothing".into(), |s| crate::text::shown(s, 2048))
                    )));
                }
            }
            tokio::time::sleep(ready_poll(started_at.elapsed())).await;
        }
        Err(Error::Unavailable(format!(
            "the agent of bot `{}` did not answer within {} ms ({last})",
            bot.name,
            self.config.agent_ready_timeout.as_millis()
        )))
    }
}

/// Whether the bot was created a moment ago, under the lock its start holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fresh {
    Yes,
    No,
}

/// How long to wait before asking the agent again: an agent usually answers within tens of milliseconds
/// of its task's start, so poll closely then (a missed poll is start latency), and less often once it is
/// slow (an image with a slow file system, a loaded host).
fn ready_poll(waited: std::time::Duration) -> std::time::Duration {
    if waited < std::time::Duration::from_secs(1) {
        std::time::Duration::from_millis(1)
    } else {
        std::time::Duration::from_millis(10)
    }
}

/// Exempts the agent (the bot's PID 1) from the kernel's OOM killer where berthd may (it needs
/// CAP_SYS_RESOURCE). Either way the agent raises the OOM score of everything it spawns, so in a bot out of
/// memory a user process dies, not the agent serving every session.
fn protect_agent(bot: &str, pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
        tracing::debug!(bot.name = bot, pid, error = %e, "cannot exempt the agent from the OOM killer");
    }
}
