-- One order for every node's bot events: `seq` is the event's id in WatchEvents, given under a lock at
-- insert so ids commit in increasing order with no gap (a reader after id N never misses a later commit
-- with a smaller one). `node` is the node that announced it. Existing events are numbered by time.
ALTER TABLE bot_events ADD COLUMN seq BIGINT;
ALTER TABLE bot_events ADD COLUMN node TEXT NOT NULL DEFAULT '';
UPDATE bot_events SET seq = numbered.n
  FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY at_ms, id) AS n FROM bot_events) AS numbered
  WHERE bot_events.id = numbered.id;
CREATE UNIQUE INDEX bot_events_by_seq ON bot_events (seq);
