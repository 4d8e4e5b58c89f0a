-- Cluster membership (cluster mode, which needs PostgreSQL): one row per node that ever joined. Heartbeats
-- and loss are stamped with the database's clock, never a node's. `lost_since_ms` is set by any live node
-- once the heartbeat is older than its node_lost_after, and cleared by the node's next heartbeat.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    max_bots BIGINT NOT NULL,
    labels_json TEXT NOT NULL,
    cordoned BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    lost_since_ms BIGINT,
    joined_at_ms BIGINT NOT NULL
);
