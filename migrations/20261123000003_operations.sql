-- Long-running operations on a bot's data (snapshot, rollback, export, import, backup): what was asked, how far
-- it got, and how it ended. `detail` is JSON the operation needs to finish or undo itself after a crash.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    bot_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    progress_done BIGINT NOT NULL,
    progress_total BIGINT NOT NULL,
    error TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE INDEX operations_by_bot ON operations (bot_name, created_at_ms);
CREATE INDEX operations_by_state ON operations (state);
