//! Bounding the task logs: a bot's PID 1 writes its stdout and stderr to a file on the host (containerd's
//! shim copies them), outside the bot's disk quota, for as long as it runs; a bot that replaced its
//! agent can write there without end. A guard empties every log past [`TASK_LOG_MAX`] four times a
//! second, so a log holds at most that plus what its bot writes in a quarter of a second. A start reads
//! only what follows it, and a log that restarts shorter is read from its start.

use std::sync::Arc;
use std::time::Duration;

use super::{BotManager, Platform};
use crate::runtime::ContainerRuntime;

/// The most a task log may hold on the host.
pub const TASK_LOG_MAX: u64 = 8 << 20;

/// How often the logs are looked at (a directory listing and a stat each).
const EVERY: Duration = Duration::from_millis(250);

impl<P: Platform> BotManager<P> {
    /// Empties task logs past [`TASK_LOG_MAX`] every [`EVERY`] until `stop` turns true.
    pub fn spawn_log_guard(self: &Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        super::spawn_every(EVERY, stop, move || {
            m.trim_task_logs();
            std::future::ready(())
        })
    }

    fn trim_task_logs(&self) {
        match self.runtime.trim_task_logs(TASK_LOG_MAX) {
            Ok(emptied) => {
                for (container, held) in emptied {
                    tracing::warn!(container.id = %container, bytes = held, "emptied a bot's task log: it passed its bound");
                    crate::metrics::metrics().repaired("task_log");
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "cannot bound the task logs"),
        }
    }
}
