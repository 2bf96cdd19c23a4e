-- Markings take effect. "counter faulty": the site's intervals in the period are
-- set to quality 'invalid' (so every rollup and aggregate leaves them out and
-- coverage drops); their previous quality is kept here so that deleting the
-- marking restores them. "road closed": a closure event published in every feed,
-- ended when the marking is deleted.
CREATE TABLE marking_overrides (
    marking_id bigint NOT NULL REFERENCES markings (id),
    channel_id integer NOT NULL,
    start      timestamptz NOT NULL,
    quality    quality NOT NULL,
    PRIMARY KEY (marking_id, channel_id, start)
);
ALTER TABLE markings ADD COLUMN event_id text REFERENCES events (id);
ALTER TABLE markings ADD COLUMN pr_from integer;
ALTER TABLE markings ADD COLUMN pr_to integer;

GRANT SELECT ON marking_overrides TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON marking_overrides TO roadfeed_writer;

-- Recurring time slots of an event (agents' entries: e.g. nights 21:00-06:00 on
-- weekdays), as a JSON list of {"days": [...], "start": "HH:MM", "end": "HH:MM"}.
ALTER TABLE events ADD COLUMN schedule jsonb NOT NULL DEFAULT '[]';
