-- Each cluster node's bot subnet, taken from `cluster_subnet` when it first joins; empty when the node
-- uses its own `subnet` setting. No two nodes share one.
ALTER TABLE nodes ADD COLUMN subnet TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX nodes_subnet ON nodes (subnet) WHERE subnet <> '';
