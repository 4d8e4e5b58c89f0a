-- Supervision: whether the user wants the bot running (so the reconciler restarts a task that died), and
-- how its task last ended (e.g. "killed by the kernel's OOM killer (exit 137)").
ALTER TABLE bots ADD COLUMN desired TEXT NOT NULL DEFAULT 'stopped';
ALTER TABLE bots ADD COLUMN last_exit TEXT NOT NULL DEFAULT '';
UPDATE bots SET desired = 'running' WHERE state IN ('running', 'starting');
