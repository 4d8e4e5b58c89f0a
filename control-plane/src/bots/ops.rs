//! Long-running operations on a bot's data: each has an id, a state and progress, recorded before the
//! work starts and settled when it ends, so `berth ops ls` and a restarted berthd see the truth.

use super::BotManager;
use super::model::now_ms;
use crate::error::{Error, Result};

use super::Platform;
pub use crate::store::records::{OpState, Operation};

impl<P: Platform> BotManager<P> {
    /// Records the start of an operation.
    pub(super) async fn begin_op(
        &self,
        bot: &str,
        kind: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<Operation> {
        let now = now_ms();
        let op = Operation {
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            bot: bot.to_string(),
            kind: kind.to_string(),
            state: OpState::Running,
            target: target.to_string(),
            detail,
            progress_done: 0,
            progress_total: 0,
            error: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.insert_op(&op).await?;
        tracing::info!(op.id = %op.id, op.kind = kind, bot.name = bot, target, "operation started");
        Ok(op)
    }

    /// Records how an operation ended and passes its result on. The error can quote the bot (a file name
    /// it chose): what is stored is made safe to store and show.
    pub(super) async fn end_op<T>(&self, op: &Operation, target: &str, result: Result<T>) -> Result<T> {
        let (state, error) = match &result {
            Ok(_) => (OpState::Succeeded, String::new()),
            Err(e) => (OpState::Failed, crate::text::shown(&crate::error::chain(e), super::LAST_ERROR_MAX)),
        };
        if let Err(e) = self.store.finish_op(&op.id, state, target, &error).await {
            tracing::error!(op.id = %op.id, error = %crate::error::chain(&e), "failed to record the end of an operation");
            if result.is_ok() {
                return Err(e.into());
            }
        }
        tracing::info!(op.id = %op.id, op.kind = %op.kind, bot.name = %op.bot, state = state.as_str(), error, "operation ended");
        crate::metrics::metrics().operation_ended(&op.kind, state.as_str());
        result
    }

    /// Operations, newest first; of one bot when `bot` is not empty.
    pub async fn operations(&self, bot: &str, limit: u32) -> Result<Vec<Operation>> {
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        Ok(self.store.list_ops(bot, limit).await?)
    }

    pub async fn operation(&self, id: &str) -> Result<Operation> {
        self.store.get_op(id).await.map_err(|e| match e {
            crate::store::StoreError::NotFound { .. } => Error::NotFound(format!("operation `{id}` not found")),
            e => e.into(),
        })
    }
}
