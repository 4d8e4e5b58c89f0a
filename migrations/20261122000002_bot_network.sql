-- A bot's network attachment: its named namespace, IP, and the CNI ADD result that DEL and CHECK need.
ALTER TABLE bots ADD COLUMN netns TEXT NOT NULL DEFAULT '';
ALTER TABLE bots ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE bots ADD COLUMN cni_result TEXT NOT NULL DEFAULT '';
