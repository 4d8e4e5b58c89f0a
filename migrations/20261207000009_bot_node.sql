-- The node that owns each bot (cluster mode); empty on a single node. A node joining a cluster takes the
-- bots with none (those a single-node berthd made on this database before).
ALTER TABLE bots ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX bots_by_node ON bots (node, name);
