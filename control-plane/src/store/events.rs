//! Event rows: one order for every node's events (`seq`, given under a lock so ids commit in order with
//! no gap), reading after an id, pruning, and the wake-up a node gets when another node stores events
//! (PostgreSQL LISTEN/NOTIFY).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::records::{BotEvent, BotState};
use super::{Store, StoreError, unavailable};

/// The channel NOTIFY wakes other nodes on once events are stored.
const CHANNEL: &str = "berth_events";

fn decode(row: &AnyRow) -> Result<BotEvent, StoreError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| StoreError::Corrupt(format!("bot_events.{c}: {e}")));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| StoreError::Corrupt(format!("bot_events.{c}: {e}")));
    let state = get_s("state")?;
    Ok(BotEvent {
        id: get_s("id")?,
        seq: get_i("seq")?,
        name: get_s("bot_name")?,
        kind: get_s("kind")?,
        state: BotState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("an event has state {state:?}")))?,
        message: get_s("message")?,
        at_ms: get_i("at_ms")?,
        node: get_s("node")?,
    })
}

impl Store {
    /// Stores `events` in their order, after every event already stored, in one transaction. An event
    /// whose id is already stored is skipped, so a batch written twice is stored once.
    pub async fn insert_events(&self, events: &[BotEvent]) -> Result<(), StoreError> {
        let op = "record events";
        let mut tx = self.pool().begin().await.map_err(unavailable(op))?;
        if self.postgres.is_some() {
            // Each statement must see what committed before it (the default, stated in case a server
            // defaults to REPEATABLE READ, whose snapshot would predate the lock).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(&mut *tx)
                .await
                .map_err(unavailable(op))?;
            // Held to commit: the next writer reads MAX(seq) only after this batch is visible, so ids
            // commit in increasing order (SQLite has one writer anyway).
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('berth events'))::TEXT")
                .execute(&mut *tx)
                .await
                .map_err(unavailable(op))?;
        }
        for e in events {
            sqlx::query(
                "INSERT INTO bot_events (id, seq, bot_name, kind, state, message, at_ms, node) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7 FROM bot_events WHERE true \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&e.id)
            .bind(&e.name)
            .bind(&e.kind)
            .bind(e.state.as_str())
            .bind(&e.message)
            .bind(e.at_ms)
            .bind(&e.node)
            .execute(&mut *tx)
            .await
            .map_err(unavailable(op))?;
        }
        if self.postgres.is_some() {
            sqlx::query("SELECT pg_notify($1, '')::TEXT")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(unavailable(op))?;
        }
        tx.commit().await.map_err(unavailable(op))?;
        Ok(())
    }

    /// Up to `limit` events with an id above `after`, in order.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<BotEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, seq, bot_name, kind, state, message, at_ms, node FROM bot_events WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await
        .map_err(unavailable("read events"))?;
        rows.iter().map(decode).collect()
    }

    /// The first and last ids kept (0 and 0 when there are none).
    pub async fn event_bounds(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT COALESCE(MIN(seq), 0) AS first, COALESCE(MAX(seq), 0) AS last FROM bot_events")
            .fetch_one(self.reader())
            .await
            .map_err(unavailable("read the event ids"))?;
        let get = |c: &str| row.try_get::<i64, _>(c).map_err(|e| StoreError::Corrupt(format!("event ids: {e}")));
        Ok((get("first")?, get("last")?))
    }

    /// Removes the oldest events: every one before the first announced at or after `before_ms` (so what is
    /// kept is always a run of ids with no hole, even when a spill stored old events late), and never the
    /// newest (ids continue from it); returns how many.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM bot_events WHERE seq < COALESCE((SELECT MIN(seq) FROM bot_events WHERE at_ms >= $1), \
             (SELECT MAX(seq) FROM bot_events))",
        )
        .bind(before_ms)
        .execute(self.pool())
        .await
        .map_err(unavailable("prune events"))?;
        Ok(done.rows_affected())
    }

    /// A wake-up for events other nodes store (PostgreSQL); `None` with SQLite, where only this node
    /// writes.
    pub async fn event_listener(&self) -> Result<Option<EventListener>, StoreError> {
        let Some(url) = &self.postgres else { return Ok(None) };
        let op = "listen for events";
        let mut l = sqlx::postgres::PgListener::connect(url).await.map_err(unavailable(op))?;
        l.listen(CHANNEL).await.map_err(unavailable(op))?;
        Ok(Some(EventListener { inner: l }))
    }
}

/// Notifications that another node stored events.
pub struct EventListener {
    inner: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for EventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventListener")
    }
}

impl EventListener {
    /// Waits for the next notification. After an error the connection is made again at the next call;
    /// notifications sent meanwhile are lost (readers poll as well).
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.inner.recv().await.map(|_| ()).map_err(unavailable("listen for events"))
    }
}
