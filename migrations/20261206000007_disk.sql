-- Per-bot disk limit of the writable layer, in bytes; 0 = unlimited (like the other limits). Bots made
-- before it have none.
ALTER TABLE bots ADD COLUMN disk_bytes BIGINT NOT NULL DEFAULT 0;
