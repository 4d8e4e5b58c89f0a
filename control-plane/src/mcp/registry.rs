//! Registering, listing and removing a bot's named MCP servers (persisted; the bot must exist, as its
//! manager says).

use super::{LaunchSpec, McpHub, McpServer, check_name};
use crate::bots::Platform;
use crate::error::{Error, Result};
use crate::time::now_ms;

impl<P: Platform> McpHub<P> {
    /// Registers `name` for `bot`; replaces an existing one only when `replace`.
    pub async fn register(&self, bot: &str, name: &str, spec: LaunchSpec, replace: bool) -> Result<McpServer> {
        check_name(name).map_err(Error::InvalidArgument)?;
        if spec.command.trim().is_empty() {
            return Err(Error::InvalidArgument(format!("MCP server `{name}`: the command is empty")));
        }
        for (k, v) in &spec.env {
            crate::bots::check_env(k, v).map_err(|e| Error::InvalidArgument(format!("MCP server `{name}`: {e}")))?;
        }
        self.manager.get(bot).await?;
        let server = McpServer { bot: bot.to_string(), name: name.to_string(), spec, created_at_ms: now_ms() };
        self.store.put_mcp_server(&server, replace).await?;
        tracing::info!(bot.name = bot, mcp.server = name, replace, "MCP server registered");
        Ok(server)
    }

    pub async fn list(&self, bot: &str) -> Result<Vec<McpServer>> {
        self.manager.get(bot).await?;
        Ok(self.store.list_mcp_servers(bot).await?)
    }

    pub async fn get(&self, bot: &str, name: &str) -> Result<McpServer> {
        Ok(self.store.get_mcp_server(bot, name).await?)
    }

    pub async fn remove(&self, bot: &str, name: &str) -> Result<()> {
        self.store.delete_mcp_servers(bot, Some(name)).await?;
        tracing::info!(bot.name = bot, mcp.server = name, "MCP server removed");
        Ok(())
    }
}
