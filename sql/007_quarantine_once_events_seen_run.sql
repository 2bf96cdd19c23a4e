-- Quarantine keeps one row per (source, record, reason): the same bad record seen
-- again by the next poll moves `last_seen` and `times_seen` instead of adding a
-- row. A record is its reference (when the parser gave one) and its excerpt.
ALTER TABLE quarantine
    ADD COLUMN record_key text
        GENERATED ALWAYS AS (md5(coalesce(record_ref, '') || E'\n' || excerpt || E'\n' || reason)) STORED,
    ADD COLUMN last_seen timestamptz,
    ADD COLUMN times_seen integer NOT NULL DEFAULT 1 CHECK (times_seen >= 1);

-- Rows written before this migration: the first of each record keeps the count.
WITH grouped AS (
    SELECT id, min(id) OVER w AS keep, count(*) OVER w AS n, max(recorded) OVER w AS last
      FROM quarantine
    WINDOW w AS (PARTITION BY source_id, record_key)
)
UPDATE quarantine q SET times_seen = g.n, last_seen = g.last
  FROM grouped g WHERE q.id = g.id AND g.id = g.keep;
DELETE FROM quarantine q
 WHERE EXISTS (SELECT 1 FROM quarantine k WHERE k.source_id = q.source_id AND k.record_key = q.record_key
                                            AND k.id < q.id);

ALTER TABLE quarantine ALTER COLUMN last_seen SET DEFAULT now();
UPDATE quarantine SET last_seen = recorded WHERE last_seen IS NULL;
ALTER TABLE quarantine ALTER COLUMN last_seen SET NOT NULL;
CREATE UNIQUE INDEX quarantine_record ON quarantine (source_id, record_key);
CREATE INDEX quarantine_last_seen ON quarantine (last_seen);

-- The run that last saw each event: a complete snapshot, stored batch by batch,
-- ends the source's open events its run did not see, with no list of ids held.
ALTER TABLE events ADD COLUMN last_run bigint;
