-- MQTT push (feed/mqtt.py). One node at a time publishes (it holds an advisory
-- lock); what the broker has acknowledged is recorded here, so a node taking
-- over goes on from there instead of publishing everything again.
CREATE TABLE push_cursors (
    channel text PRIMARY KEY,   -- 'events': the last event_versions.seq acknowledged
    seq     bigint NOT NULL
);

-- Per site, the fingerprint of the state last acknowledged (its latest values).
CREATE TABLE push_sites (
    site_id     bigint PRIMARY KEY,
    fingerprint bytea NOT NULL
);

GRANT SELECT ON push_cursors, push_sites TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON push_cursors, push_sites TO roadfeed_writer;
