-- Bots and their lifecycle events. Portable SQL: runs unchanged on SQLite and PostgreSQL.
CREATE TABLE bots (
    name TEXT PRIMARY KEY,
    container_id TEXT NOT NULL,
    image TEXT NOT NULL,
    state TEXT NOT NULL,
    env_json TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    pids BIGINT NOT NULL,
    token TEXT NOT NULL,
    last_error TEXT NOT NULL,
    restart_count BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE bot_events (
    id TEXT PRIMARY KEY,
    bot_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);

CREATE INDEX bot_events_by_bot ON bot_events (bot_name, at_ms);
