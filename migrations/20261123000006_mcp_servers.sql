-- MCP stdio servers registered per bot: what berthd starts in the bot for each session with one.
-- `spec` is JSON: {"command", "args", "env", "cwd"}. Removed with the bot.
CREATE TABLE mcp_servers (
    bot_name TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (bot_name, name)
);
