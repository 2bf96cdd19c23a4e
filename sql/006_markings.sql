-- Manual markings recorded by operators through the admin API: a road closed
-- over a period (so that low counts there are explained), a counter known to be
-- faulty over a period (so that its values can be set aside). Written only by
-- the admin API through the writer's connection; the HTTP API reads them.
CREATE TABLE markings (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('road_closed', 'counter_faulty')),
    road       text CHECK (road IS NULL OR length(road) BETWEEN 1 AND 64),
    site_id    integer REFERENCES sites (id),
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz CHECK (valid_to IS NULL OR valid_to > valid_from),
    comment    text NOT NULL DEFAULT '' CHECK (length(comment) <= 2000),
    created    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'road_closed' AND road IS NOT NULL AND site_id IS NULL)
        OR (kind = 'counter_faulty' AND site_id IS NOT NULL))
);
CREATE INDEX markings_road ON markings (road, valid_from) WHERE road IS NOT NULL;
CREATE INDEX markings_site ON markings (site_id, valid_from) WHERE site_id IS NOT NULL;

-- The default privileges of 003 cover tables created by the role that ran it;
-- say it explicitly in case another role migrates.
GRANT SELECT ON markings TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON markings TO roadfeed_writer;
GRANT USAGE ON SEQUENCE markings_id_seq TO roadfeed_writer;
