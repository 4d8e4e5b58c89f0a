//! Bot rows.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::records::{BotRecord, BotState};
use super::{Store, StoreError, unavailable};
use crate::network::Attachment;
use crate::runtime::Limits;

/// The bot columns, in one place (sqlx wants static SQL, so this is a macro for `concat!`).
macro_rules! columns {
    () => {
        "name, container_id, image, state, env_json, labels_json, memory_bytes, cpu_millis, pids, \
         token, last_error, restart_count, created_at_ms, updated_at_ms, netns, ip, cni_result, desired, last_exit, egress, \
         disk_bytes, node"
    };
}

fn limit(v: Option<u64>) -> i64 {
    v.map_or(0, |v| v as i64)
}

fn unlimit(v: i64) -> Option<u64> {
    (v > 0).then_some(v as u64)
}

fn decode(row: &AnyRow) -> Result<BotRecord, StoreError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(|e| StoreError::Corrupt(format!("bots.{c}: {e}")));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(|e| StoreError::Corrupt(format!("bots.{c}: {e}")));
    let name = get_s("name")?;
    let state = get_s("state")?;
    let json = |c: &str| -> Result<BTreeMap<String, String>, StoreError> {
        serde_json::from_str(&get_s(c)?).map_err(|e| StoreError::Corrupt(format!("bots.{c} of {name}: {e}")))
    };
    Ok(BotRecord {
        container_id: get_s("container_id")?,
        image: get_s("image")?,
        state: BotState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bot {name} has state {state:?}")))?,
        env: json("env_json")?,
        labels: json("labels_json")?,
        limits: Limits {
            memory_bytes: unlimit(get_i("memory_bytes")?),
            cpu_millis: unlimit(get_i("cpu_millis")?),
            pids: unlimit(get_i("pids")?),
            disk_bytes: unlimit(get_i("disk_bytes")?),
        },
        token: get_s("token")?,
        last_error: get_s("last_error")?,
        restart_count: get_i("restart_count")? as u64,
        desired_running: get_s("desired")? == "running",
        last_exit: get_s("last_exit")?,
        created_at_ms: get_i("created_at_ms")?,
        updated_at_ms: get_i("updated_at_ms")?,
        network: {
            let netns = get_s("netns")?;
            if netns.is_empty() {
                None
            } else {
                let result = serde_json::from_str(&get_s("cni_result")?)
                    .map_err(|e| StoreError::Corrupt(format!("bots.cni_result of {name}: {e}")))?;
                Some(Attachment { netns: netns.into(), ip: get_s("ip")?, result })
            }
        },
        egress: crate::network::Egress::from_db(&get_s("egress")?)
            .map_err(|e| StoreError::Corrupt(format!("bots.egress of {name}: {e}")))?,
        node: get_s("node")?,
        name,
    })
}

impl Store {
    /// Inserts a new bot; `AlreadyExists` if the name is taken.
    pub async fn insert_bot(&self, b: &BotRecord) -> Result<(), StoreError> {
        let sql = concat!(
            "INSERT INTO bots (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
        );
        let r = sqlx::query(sql)
            .bind(&b.name)
            .bind(&b.container_id)
            .bind(&b.image)
            .bind(b.state.as_str())
            .bind(serde_json::to_string(&b.env).unwrap_or_default())
            .bind(serde_json::to_string(&b.labels).unwrap_or_default())
            .bind(limit(b.limits.memory_bytes))
            .bind(limit(b.limits.cpu_millis))
            .bind(limit(b.limits.pids))
            .bind(&b.token)
            .bind(&b.last_error)
            .bind(b.restart_count as i64)
            .bind(b.created_at_ms)
            .bind(b.updated_at_ms)
            .bind(b.network.as_ref().map(|n| n.netns.display().to_string()).unwrap_or_default())
            .bind(b.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default())
            .bind(b.network.as_ref().map(|n| n.result.to_string()).unwrap_or_default())
            .bind(if b.desired_running { "running" } else { "stopped" })
            .bind(&b.last_exit)
            .bind(b.egress.to_db())
            .bind(limit(b.limits.disk_bytes))
            .bind(&b.node)
            .execute(self.pool())
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists { what: format!("bot `{}`", b.name) })
            }
            Err(e) => Err(StoreError::Unavailable { op: "insert bot".into(), source: e }),
        }
    }

    /// Sets a bot's egress policy.
    pub async fn set_egress(&self, name: &str, egress: &crate::network::Egress) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE bots SET egress = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(egress.to_db())
            .bind(crate::time::now_ms())
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("set a bot's egress"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("bot `{name}`") });
        }
        Ok(())
    }

    pub async fn get_bot(&self, name: &str) -> Result<BotRecord, StoreError> {
        let sql = concat!("SELECT ", columns!(), " FROM bots WHERE name = $1");
        let row = sqlx::query(sql).bind(name).fetch_optional(self.reader()).await.map_err(unavailable("read bot"))?;
        match row {
            Some(r) => decode(&r),
            None => Err(StoreError::NotFound { what: format!("bot `{name}`") }),
        }
    }
    /// Every bot, a page at a time in name order, after `after` ("" = from the first).
    pub fn bot_pages(&self, after: &str) -> BotPages<'_> {
        BotPages { store: self, after: after.to_string(), node: None, done: false, size: BOT_PAGE }
    }

    /// As [`Store::bot_pages`], `size` bots per page (at most 500): a caller that wants a few reads a few.
    pub fn bot_pages_of(&self, after: &str, size: u32) -> BotPages<'_> {
        BotPages { store: self, after: after.to_string(), node: None, done: false, size: size.clamp(1, BOT_PAGE) }
    }

    /// The bots `node` owns (every bot when `None`), a page at a time in name order.
    pub fn node_bot_pages(&self, node: Option<&str>) -> BotPages<'_> {
        BotPages { store: self, after: String::new(), node: node.map(str::to_string), done: false, size: BOT_PAGE }
    }

    /// Bots after `after` (by name), in name order, at most `limit`; only `node`'s when given.
    pub async fn list_bots(&self, after: &str, limit: u32, node: Option<&str>) -> Result<Vec<BotRecord>, StoreError> {
        let rows = match node {
            None => {
                sqlx::query(concat!("SELECT ", columns!(), " FROM bots WHERE name > $1 ORDER BY name LIMIT $2"))
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await
            }
            Some(n) => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM bots WHERE node = $1 AND name > $2 ORDER BY name LIMIT $3"
                ))
                .bind(n)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
            }
        }
        .map_err(unavailable("list bots"))?;
        rows.iter().map(decode).collect()
    }

    /// Gives `node` every bot that has no owner (made by a single-node berthd on this database).
    pub async fn adopt_unowned_bots(&self, node: &str) -> Result<u64, StoreError> {
        let r = sqlx::query("UPDATE bots SET node = $1 WHERE node = ''")
            .bind(node)
            .execute(self.pool())
            .await
            .map_err(unavailable("adopt bots"))?;
        Ok(r.rows_affected())
    }

    /// How many bots each node owns and the sum of their memory limits (unlimited counts as 0).
    pub async fn bots_per_node(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT node, COUNT(*) AS bots, CAST(COALESCE(SUM(memory_bytes), 0) AS BIGINT) AS memory FROM bots GROUP BY node",
        )
        .fetch_all(self.reader())
        .await
        .map_err(unavailable("count bots per node"))?;
        let get = |r: &AnyRow, c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
        rows.iter()
            .map(|r| {
                let node: String = r.try_get("node")?;
                Ok((node, get(r, "bots")?, get(r, "memory")?))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| StoreError::Corrupt(format!("bots per node: {e}")))
    }

    /// Sets a bot's state and last error (and counts a restart when asked).
    pub async fn set_state(
        &self,
        name: &str,
        state: BotState,
        last_error: &str,
        restarted: bool,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE bots SET state = $1, last_error = $2, restart_count = restart_count + $3, updated_at_ms = $4 WHERE name = $5",
        )
        .bind(state.as_str())
        .bind(last_error)
        .bind(i64::from(restarted))
        .bind(crate::time::now_ms())
        .bind(name)
        .execute(self.pool())
        .await
        .map_err(unavailable("update bot state"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("bot `{name}`") });
        }
        Ok(())
    }

    /// Records whether the user wants the bot running (the reconciler keeps it so).
    pub async fn set_desired(&self, name: &str, running: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE bots SET desired = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(if running { "running" } else { "stopped" })
            .bind(crate::time::now_ms())
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("record the desired state"))?;
        Ok(())
    }

    /// Records how the bot's task last ended.
    pub async fn set_last_exit(&self, name: &str, last_exit: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bots SET last_exit = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(last_exit)
            .bind(crate::time::now_ms())
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("record the last exit"))?;
        Ok(())
    }

    /// Replaces a bot's agent token (a new one for every task start).
    pub async fn set_token(&self, name: &str, token: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bots SET token = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(token)
            .bind(crate::time::now_ms())
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("record the agent token"))?;
        Ok(())
    }

    /// Records (or clears) a bot's network attachment.
    pub async fn set_network(&self, name: &str, a: Option<&Attachment>) -> Result<(), StoreError> {
        sqlx::query("UPDATE bots SET netns = $1, ip = $2, cni_result = $3, updated_at_ms = $4 WHERE name = $5")
            .bind(a.map(|n| n.netns.display().to_string()).unwrap_or_default())
            .bind(a.map(|n| n.ip.clone()).unwrap_or_default())
            .bind(a.map(|n| n.result.to_string()).unwrap_or_default())
            .bind(crate::time::now_ms())
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("record the network"))?;
        Ok(())
    }

    /// Deletes a bot's row and what hangs off it (its registered MCP servers).
    pub async fn delete_bot(&self, name: &str) -> Result<(), StoreError> {
        self.delete_mcp_servers(name, None).await?;
        sqlx::query("DELETE FROM bots WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(unavailable("delete bot"))?;
        Ok(())
    }
}

/// Bots read per page by [`BotPages`].
const BOT_PAGE: u32 = 500;

/// Pages over every bot: `while let Some(page) = pages.next().await? { … }`.
pub struct BotPages<'a> {
    store: &'a Store,
    after: String,
    node: Option<String>,
    done: bool,
    size: u32,
}

impl BotPages<'_> {
    /// The next page of bots (never empty), or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<BotRecord>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self.store.list_bots(&self.after, self.size, self.node.as_deref()).await?;
        self.done = page.len() < self.size as usize;
        match page.last() {
            Some(b) => self.after = b.name.clone(),
            None => return Ok(None),
        }
        Ok(Some(page))
    }
}
