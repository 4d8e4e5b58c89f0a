-- Per-bot egress policy: "all" (everything but the host, other bots and berthd's egress_deny list),
-- "none", or "cidrs:A,B" (only those destinations).
ALTER TABLE bots ADD COLUMN egress TEXT NOT NULL DEFAULT 'all';
