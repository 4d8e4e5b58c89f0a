//! Operation rows: long-running work on a bot's data, durable so a restarted berthd can settle what a
//! crash interrupted.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::records::{OpState, Operation};
use super::{Store, StoreError, unavailable};
use crate::time::now_ms;

/// The operation columns, in one place (static SQL for sqlx, hence a macro for `concat!`).
macro_rules! columns {
    () => {
        "id, bot_name, kind, state, target, detail, progress_done, progress_total, error, created_at_ms, updated_at_ms"
    };
}

fn decode(row: &AnyRow) -> Result<Operation, StoreError> {
    let s = |c: &str| row.try_get::<String, _>(c).map_err(|e| StoreError::Corrupt(format!("operations.{c}: {e}")));
    let i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| StoreError::Corrupt(format!("operations.{c}: {e}")));
    let state = s("state")?;
    Ok(Operation {
        id: s("id")?,
        bot: s("bot_name")?,
        kind: s("kind")?,
        state: OpState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("operation state {state:?}")))?,
        target: s("target")?,
        detail: serde_json::from_str(&s("detail")?)
            .map_err(|e| StoreError::Corrupt(format!("operations.detail: {e}")))?,
        progress_done: i("progress_done")? as u64,
        progress_total: i("progress_total")? as u64,
        error: s("error")?,
        created_at_ms: i("created_at_ms")?,
        updated_at_ms: i("updated_at_ms")?,
    })
}

impl Store {
    pub async fn insert_op(&self, op: &Operation) -> Result<(), StoreError> {
        let sql =
            concat!("INSERT INTO operations (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        sqlx::query(sql)
            .bind(&op.id)
            .bind(&op.bot)
            .bind(&op.kind)
            .bind(op.state.as_str())
            .bind(&op.target)
            .bind(op.detail.to_string())
            .bind(op.progress_done as i64)
            .bind(op.progress_total as i64)
            .bind(&op.error)
            .bind(op.created_at_ms)
            .bind(op.updated_at_ms)
            .execute(self.pool())
            .await
            .map_err(unavailable("record an operation"))?;
        Ok(())
    }

    /// Records how far an operation got.
    pub async fn op_progress(&self, id: &str, done: u64, total: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE operations SET progress_done = $1, progress_total = $2, updated_at_ms = $3 WHERE id = $4")
            .bind(done as i64)
            .bind(total as i64)
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(unavailable("record progress"))?;
        Ok(())
    }

    /// Replaces an operation's detail (what it needs to settle after a crash).
    pub async fn op_detail(&self, id: &str, detail: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE operations SET detail = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(detail.to_string())
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(unavailable("record an operation's detail"))?;
        Ok(())
    }

    /// Ends an operation.
    pub async fn finish_op(&self, id: &str, state: OpState, target: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE operations SET state = $1, target = $2, error = $3, updated_at_ms = $4 WHERE id = $5")
            .bind(state.as_str())
            .bind(target)
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(unavailable("finish an operation"))?;
        Ok(())
    }

    pub async fn get_op(&self, id: &str) -> Result<Operation, StoreError> {
        let sql = concat!("SELECT ", columns!(), " FROM operations WHERE id = $1");
        let row =
            sqlx::query(sql).bind(id).fetch_optional(self.reader()).await.map_err(unavailable("read operation"))?;
        row.as_ref().map(decode).unwrap_or_else(|| Err(StoreError::NotFound { what: format!("operation `{id}`") }))
    }

    /// The newest operations first, of one bot (or all when `bot` is empty), at most `limit`.
    pub async fn list_ops(&self, bot: &str, limit: u32) -> Result<Vec<Operation>, StoreError> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM operations WHERE ($1 = '' OR bot_name = $2) ORDER BY created_at_ms DESC, id LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(bot)
            .bind(bot)
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await
            .map_err(unavailable("list operations"))?;
        rows.iter().map(decode).collect()
    }

    /// Operations a crash left running.
    pub async fn running_ops(&self) -> Result<Vec<Operation>, StoreError> {
        let sql = concat!("SELECT ", columns!(), " FROM operations WHERE state = 'running' ORDER BY created_at_ms");
        let rows = sqlx::query(sql).fetch_all(self.reader()).await.map_err(unavailable("list running operations"))?;
        rows.iter().map(decode).collect()
    }
}
