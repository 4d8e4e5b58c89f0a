//! Cluster membership: the `nodes` table. Every time in it comes from the database's clock (`NOW_MS`), so
//! nodes whose clocks disagree still agree on who is late. Cluster mode runs on PostgreSQL only (berthd
//! refuses it on SQLite), and these statements are written for it.

use std::collections::BTreeMap;

use sqlx::Row;

use super::records::{NodeRecord, NodeSpec};
use super::{Store, StoreError, unavailable};

/// The database's time, in milliseconds since the epoch (`clock_timestamp`: the time of the statement,
/// not of its transaction). A macro, so statements stay `&'static str` (`concat!`).
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The node was active.
    Alive,
    /// The node had been marked lost and is active again.
    Back,
}

/// Where a bot lives: its owner node and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotOwner {
    pub node: String,
    /// The owner's address; empty when its row is gone.
    pub address: String,
    /// How long ago it was marked lost (by the database's clock), if it is.
    pub lost_for_ms: Option<i64>,
}

/// A node whose heartbeat is another live node's: the same name at another address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTaken {
    pub address: String,
    pub heartbeat_age_ms: i64,
}

impl Store {
    /// Joins the cluster as `spec`, or rejoins under the same name. Refused (with who holds it) when a node
    /// of this name at another address heartbeat within `fresh_ms`: two daemons must not share a name.
    /// The same name at the same address is this node started again, and takes its row back.
    pub async fn join_cluster(&self, spec: &NodeSpec, fresh_ms: i64) -> Result<Result<(), NameTaken>, StoreError> {
        let mut tx = self.pool().begin().await.map_err(unavailable("join the cluster"))?;
        // Two daemons joining under one new name at once: the second waits here and then sees the first.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::TEXT")
            .bind(format!("berth node {}", spec.name))
            .execute(&mut *tx)
            .await
            .map_err(unavailable("join the cluster"))?;
        let held = sqlx::query(concat!(
            "SELECT address, ",
            now_ms!(),
            " - heartbeat_ms AS age FROM nodes WHERE name = $1 AND lost_since_ms IS NULL FOR UPDATE"
        ))
        .bind(&spec.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable("join the cluster"))?;
        if let Some(row) = held {
            let address: String = row.try_get("address").map_err(corrupt)?;
            let age: i64 = row.try_get("age").map_err(corrupt)?;
            if address != spec.address && age < fresh_ms {
                return Ok(Err(NameTaken { address, heartbeat_age_ms: age }));
            }
        }
        let labels = serde_json::to_string(&spec.labels).unwrap_or_default();
        sqlx::query(concat!(
            "INSERT INTO nodes (name, address, memory_bytes, cpu_millis, max_bots, labels_json, cordoned, \
             heartbeat_ms, lost_since_ms, joined_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, ",
            now_ms!(),
            ", NULL, ",
            now_ms!(),
            ") \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, memory_bytes = excluded.memory_bytes, \
             cpu_millis = excluded.cpu_millis, max_bots = excluded.max_bots, labels_json = excluded.labels_json, \
             heartbeat_ms = excluded.heartbeat_ms, lost_since_ms = NULL"
        ))
        .bind(&spec.name)
        .bind(&spec.address)
        .bind(to_i64(spec.memory_bytes))
        .bind(to_i64(spec.cpu_millis))
        .bind(to_i64(spec.max_bots))
        .bind(labels)
        .execute(&mut *tx)
        .await
        .map_err(unavailable("join the cluster"))?;
        tx.commit().await.map_err(unavailable("join the cluster"))?;
        Ok(Ok(()))
    }

    /// Stamps `name`'s heartbeat; a node marked lost is active again. `NotFound` if its row is gone.
    pub async fn heartbeat(&self, name: &str) -> Result<Beat, StoreError> {
        // The old `lost_since_ms` is read in the same statement that clears it.
        let row = sqlx::query(concat!(
            "UPDATE nodes SET heartbeat_ms = ",
            now_ms!(),
            ", lost_since_ms = NULL FROM nodes AS old \
             WHERE nodes.name = $1 AND old.name = nodes.name RETURNING old.lost_since_ms"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(unavailable("send a heartbeat"))?;
        let row = row.ok_or_else(|| StoreError::NotFound { what: format!("node `{name}`") })?;
        let was: Option<i64> = row.try_get("lost_since_ms").map_err(corrupt)?;
        Ok(if was.is_some() { Beat::Back } else { Beat::Alive })
    }

    /// Marks lost every node whose last heartbeat is older than `after_ms`; returns the ones this call
    /// marked (each is marked once, by whichever live node gets there first).
    pub async fn mark_lost_nodes(&self, after_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(concat!(
            "UPDATE nodes SET lost_since_ms = ",
            now_ms!(),
            " WHERE lost_since_ms IS NULL AND heartbeat_ms < ",
            now_ms!(),
            " - $1 \
             RETURNING name"
        ))
        .bind(after_ms)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable("mark lost nodes"))?;
        rows.iter().map(|r| r.try_get("name").map_err(corrupt)).collect()
    }

    /// The owner of bot `name` (`None` if there is no such bot), read with its node's state in one
    /// statement: what routing a call asks first.
    pub async fn bot_owner(&self, name: &str) -> Result<Option<BotOwner>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT bots.node AS node, nodes.address AS address, ",
            now_ms!(),
            " - nodes.lost_since_ms AS lost_for FROM bots LEFT JOIN nodes ON nodes.name = bots.node \
             WHERE bots.name = $1"
        ))
        .bind(name)
        .fetch_optional(self.reader())
        .await
        .map_err(unavailable("find a bot's node"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(BotOwner {
            node: row.try_get("node").map_err(corrupt)?,
            address: row.try_get::<Option<String>, _>("address").map_err(corrupt)?.unwrap_or_default(),
            lost_for_ms: row.try_get("lost_for").map_err(corrupt)?,
        }))
    }

    /// Every node's subnet taken from the cluster's range (empty for a node using its own setting).
    pub async fn node_subnets(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, subnet FROM nodes ORDER BY name")
            .fetch_all(self.pool())
            .await
            .map_err(unavailable("read the nodes' subnets"))?;
        rows.iter().map(|r| Ok((r.try_get("name").map_err(corrupt)?, r.try_get("subnet").map_err(corrupt)?))).collect()
    }

    /// Gives node `name` `subnet`; `false` if another node took it first.
    pub async fn set_node_subnet(&self, name: &str, subnet: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE nodes SET subnet = $1 WHERE name = $2")
            .bind(subnet)
            .bind(name)
            .execute(self.pool())
            .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound { what: format!("node `{name}`") }),
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(unavailable("record a node's subnet")(e)),
        }
    }

    /// The lost nodes and when each was marked lost.
    pub async fn lost_nodes(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT name, lost_since_ms FROM nodes WHERE lost_since_ms IS NOT NULL")
            .fetch_all(self.reader())
            .await
            .map_err(unavailable("list lost nodes"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("name").map_err(corrupt)?, r.try_get("lost_since_ms").map_err(corrupt)?)))
            .collect()
    }

    /// Every node, by name.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT name, address, memory_bytes, cpu_millis, max_bots, labels_json, cordoned, \
             ",
            now_ms!(),
            " - heartbeat_ms AS age, lost_since_ms, joined_at_ms, subnet FROM nodes ORDER BY name"
        ))
        .fetch_all(self.reader())
        .await
        .map_err(unavailable("list nodes"))?;
        rows.iter().map(decode).collect()
    }

    /// Cordons a node (no new bots) or lifts it. `NotFound` if no node has that name.
    pub async fn set_cordoned(&self, name: &str, cordoned: bool) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE nodes SET cordoned = $1 WHERE name = $2")
            .bind(i64::from(cordoned))
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("cordon a node"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("node `{name}`") });
        }
        Ok(())
    }
}

fn decode(r: &sqlx::any::AnyRow) -> Result<NodeRecord, StoreError> {
    let labels: String = r.try_get("labels_json").map_err(corrupt)?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt(format!("a node's labels: {e}")))?;
    let u = |c: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(c).map_err(corrupt)?.max(0) as u64) };
    Ok(NodeRecord {
        spec: NodeSpec {
            name: r.try_get("name").map_err(corrupt)?,
            address: r.try_get("address").map_err(corrupt)?,
            memory_bytes: u("memory_bytes")?,
            cpu_millis: u("cpu_millis")?,
            max_bots: u("max_bots")?,
            labels,
        },
        cordoned: r.try_get::<i64, _>("cordoned").map_err(corrupt)? != 0,
        heartbeat_age_ms: r.try_get("age").map_err(corrupt)?,
        lost_since_ms: r.try_get("lost_since_ms").map_err(corrupt)?,
        joined_at_ms: r.try_get("joined_at_ms").map_err(corrupt)?,
        subnet: r.try_get("subnet").map_err(corrupt)?,
    })
}

fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(format!("a node row: {e}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
