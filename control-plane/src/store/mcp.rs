//! Registered MCP servers: one row per (bot, name), the launch spec as JSON.

use sqlx::Row;

use super::records::McpServer;
use super::{Store, StoreError, unavailable};

impl Store {
    /// Inserts a server, or replaces one of the same name when `replace`; `AlreadyExists` otherwise.
    pub async fn put_mcp_server(&self, s: &McpServer, replace: bool) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&s.spec)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode MCP server `{}`: {e}", s.name)))?;
        let sql = if replace {
            "INSERT INTO mcp_servers (bot_name, name, spec, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bot_name, name) DO UPDATE SET spec = excluded.spec, created_at_ms = excluded.created_at_ms"
        } else {
            "INSERT INTO mcp_servers (bot_name, name, spec, created_at_ms) VALUES ($1, $2, $3, $4)"
        };
        let r = sqlx::query(sql).bind(&s.bot).bind(&s.name).bind(spec).bind(s.created_at_ms).execute(self.pool()).await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists { what: format!("MCP server `{}` of bot `{}`", s.name, s.bot) })
            }
            Err(source) => Err(StoreError::Unavailable { op: "register an MCP server".into(), source }),
        }
    }

    /// A bot's servers, by name.
    pub async fn list_mcp_servers(&self, bot: &str) -> Result<Vec<McpServer>, StoreError> {
        let rows = sqlx::query(
            "SELECT bot_name, name, spec, created_at_ms FROM mcp_servers WHERE bot_name = $1 ORDER BY name",
        )
        .bind(bot)
        .fetch_all(self.reader())
        .await
        .map_err(unavailable("list MCP servers"))?;
        rows.iter().map(decode).collect()
    }

    pub async fn get_mcp_server(&self, bot: &str, name: &str) -> Result<McpServer, StoreError> {
        let row = sqlx::query(
            "SELECT bot_name, name, spec, created_at_ms FROM mcp_servers WHERE bot_name = $1 AND name = $2",
        )
        .bind(bot)
        .bind(name)
        .fetch_optional(self.reader())
        .await
        .map_err(unavailable("read an MCP server"))?;
        match row {
            Some(r) => decode(&r),
            None => Err(StoreError::NotFound { what: format!("MCP server `{name}` of bot `{bot}`") }),
        }
    }

    /// Removes one server (`NotFound` if there is none), or all of a bot's when `name` is `None`.
    pub async fn delete_mcp_servers(&self, bot: &str, name: Option<&str>) -> Result<(), StoreError> {
        let r = match name {
            Some(n) => sqlx::query("DELETE FROM mcp_servers WHERE bot_name = $1 AND name = $2").bind(bot).bind(n),
            None => sqlx::query("DELETE FROM mcp_servers WHERE bot_name = $1").bind(bot),
        }
        .execute(self.pool())
        .await
        .map_err(unavailable("remove MCP servers"))?;
        if let Some(n) = name
            && r.rows_affected() == 0
        {
            return Err(StoreError::NotFound { what: format!("MCP server `{n}` of bot `{bot}`") });
        }
        Ok(())
    }
}

fn decode(row: &sqlx::any::AnyRow) -> Result<McpServer, StoreError> {
    let s = |c: &str| row.try_get::<String, _>(c).map_err(|e| StoreError::Corrupt(format!("mcp_servers.{c}: {e}")));
    Ok(McpServer {
        bot: s("bot_name")?,
        name: s("name")?,
        spec: serde_json::from_str(&s("spec")?).map_err(|e| StoreError::Corrupt(format!("mcp_servers.spec: {e}")))?,
        created_at_ms: row.try_get::<i64, _>("created_at_ms").map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}
