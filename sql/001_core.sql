-- Core schema: sources and their runs, counting data (national "Comptage des
-- mobilités" model: site -> channel -> measure), rollups, road events, quarantine.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE roadfeed_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
-- Daily rollups are local days of this zone (a département's day, not UTC's).
INSERT INTO roadfeed_meta VALUES ('timezone', 'Europe/Paris');

CREATE TABLE sources (
    id            text PRIMARY KEY,
    kind          text NOT NULL,
    url           text NOT NULL,
    etag          text,
    last_modified text,
    watermark     text,
    last_success  timestamptz,
    last_error    text,
    last_error_at timestamptz,
    lease_owner   text,
    lease_until   timestamptz,
    updated       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE source_runs (
    id                  bigserial PRIMARY KEY,
    source_id           text NOT NULL REFERENCES sources (id),
    started             timestamptz NOT NULL DEFAULT now(),
    finished            timestamptz,
    http_status         integer,
    bytes               bigint NOT NULL DEFAULT 0,
    records_new         integer NOT NULL DEFAULT 0,
    records_updated     integer NOT NULL DEFAULT 0,
    records_unchanged   integer NOT NULL DEFAULT 0,
    records_quarantined integer NOT NULL DEFAULT 0,
    complete            boolean NOT NULL DEFAULT false,
    error               text
);
CREATE INDEX source_runs_source_started ON source_runs (source_id, started DESC);

CREATE TABLE sites (
    id          serial PRIMARY KEY,
    source_id   text NOT NULL REFERENCES sources (id),
    external_id text NOT NULL,
    name        text NOT NULL DEFAULT '',
    road        text,
    pr          integer,
    abscissa    integer,
    insee       text,
    geom        geometry(Point, 4326),
    metadata    jsonb NOT NULL DEFAULT '{}',
    updated     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, external_id)
);
CREATE INDEX sites_geom ON sites USING gist (geom);
CREATE INDEX sites_road ON sites (road);

CREATE TABLE channels (
    id            serial PRIMARY KEY,
    site_id       integer NOT NULL REFERENCES sites (id),
    source_id     text NOT NULL REFERENCES sources (id),
    external_id   text NOT NULL,
    direction     text,
    lane          integer,
    vehicle_class text NOT NULL DEFAULT 'all' CHECK (vehicle_class IN ('all', 'light', 'heavy')),
    mobility_type text NOT NULL DEFAULT 'car',
    time_step     integer NOT NULL CHECK (time_step > 0 AND 86400 % time_step = 0),
    UNIQUE (source_id, external_id)
);
CREATE INDEX channels_site ON channels (site_id);

CREATE TYPE quality AS ENUM ('observed', 'estimated', 'missing', 'invalid');

-- Raw intervals. No foreign key to channels: the storage API resolves channels
-- before writing, and a per-row key check would halve ingest speed.
CREATE TABLE measurements (
    channel_id integer NOT NULL,
    start      timestamptz NOT NULL,
    length     integer NOT NULL CHECK (length > 0),
    count      integer CHECK (count >= 0),
    speed      real CHECK (speed >= 0),
    occupancy  real CHECK (occupancy >= 0 AND occupancy <= 100),
    quality    quality NOT NULL,
    -- The ingesting run, set per transaction with SET LOCAL roadfeed.run_id so
    -- that COPY needs no extra column.
    run_id     bigint DEFAULT nullif(current_setting('roadfeed.run_id', true), '')::bigint,
    PRIMARY KEY (channel_id, start)
);

-- Rollups. An interval counts as present when it has a count and is observed or
-- estimated; expected is what the channel's time step implies, so coverage =
-- present / expected is exact. Speeds are count-weighted.
CREATE TABLE rollup_hourly (
    channel_id          integer NOT NULL,
    bucket              timestamptz NOT NULL,
    count_sum           bigint NOT NULL,
    speed_weighted_sum  double precision NOT NULL,
    speed_count         bigint NOT NULL,
    intervals_present   integer NOT NULL,
    intervals_estimated integer NOT NULL,
    intervals_expected  integer NOT NULL,
    PRIMARY KEY (channel_id, bucket)
);

CREATE TABLE rollup_daily (
    channel_id          integer NOT NULL,
    day                 date NOT NULL,
    count_sum           bigint NOT NULL,
    speed_weighted_sum  double precision NOT NULL,
    speed_count         bigint NOT NULL,
    intervals_present   integer NOT NULL,
    intervals_estimated integer NOT NULL,
    intervals_expected  integer NOT NULL,
    PRIMARY KEY (channel_id, day)
);

CREATE TYPE event_status AS ENUM ('planned', 'active', 'ended');

CREATE TABLE events (
    id             text PRIMARY KEY,
    source_id      text NOT NULL REFERENCES sources (id),
    external_id    text NOT NULL,
    version        integer NOT NULL CHECK (version >= 1),
    type           text NOT NULL,
    subtype        text,
    status         event_status NOT NULL,
    severity       text NOT NULL,
    planned_start  timestamptz,
    planned_end    timestamptz,
    actual_start   timestamptz,
    actual_end     timestamptz,
    road           text,
    direction      text,
    lanes_affected text,
    geom           geometry(Geometry, 4326)
                   CHECK (geom IS NULL OR GeometryType(geom) IN ('POINT', 'LINESTRING')),
    descriptions   jsonb NOT NULL DEFAULT '{}',
    detour         text,
    location_refs  jsonb NOT NULL DEFAULT '{}',
    source_version text,
    source_updated timestamptz,
    content_hash   bytea NOT NULL,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    updated        timestamptz NOT NULL,
    UNIQUE (source_id, external_id)
);
CREATE INDEX events_geom ON events USING gist (geom);
CREATE INDEX events_status ON events (status, updated);

-- Append-only: one row per version, so every past state can be rebuilt. `seq`
-- orders all changes of all events: it is the cursor of the delta feed.
CREATE TABLE event_versions (
    seq      bigserial UNIQUE,
    event_id text NOT NULL REFERENCES events (id),
    version  integer NOT NULL,
    change   text NOT NULL CHECK (change IN ('created', 'updated', 'ended', 'reopened')),
    recorded timestamptz NOT NULL,
    run_id   bigint,
    state    jsonb NOT NULL,
    PRIMARY KEY (event_id, version)
);

CREATE TABLE quarantine (
    id         bigserial PRIMARY KEY,
    source_id  text NOT NULL,
    run_id     bigint,
    record_ref text,
    reason     text NOT NULL,
    excerpt    text NOT NULL DEFAULT '',
    recorded   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_source ON quarantine (source_id, recorded DESC);

-- Monthly and annual aggregates derive from the daily rollup. Expected intervals
-- come from the calendar (local time, DST included), so days without any data
-- lower the coverage instead of vanishing.
CREATE VIEW rollup_monthly AS
SELECT d.channel_id,
       date_trunc('month', d.day)::date AS month,
       sum(d.count_sum)::bigint AS count_sum,
       sum(d.speed_weighted_sum) AS speed_weighted_sum,
       sum(d.speed_count)::bigint AS speed_count,
       sum(d.intervals_present)::integer AS intervals_present,
       sum(d.intervals_estimated)::integer AS intervals_estimated,
       (extract(epoch FROM ((date_trunc('month', d.day) + interval '1 month')::timestamp AT TIME ZONE tz.value)
                         - (date_trunc('month', d.day)::timestamp AT TIME ZONE tz.value))::integer
        / c.time_step) AS intervals_expected,
       count(*)::integer AS days_with_data
  FROM rollup_daily d
  JOIN channels c ON c.id = d.channel_id
  CROSS JOIN (SELECT value FROM roadfeed_meta WHERE key = 'timezone') tz
 GROUP BY d.channel_id, date_trunc('month', d.day), c.time_step, tz.value;

CREATE VIEW rollup_annual AS
SELECT d.channel_id,
       extract(year FROM d.day)::integer AS year,
       sum(d.count_sum)::bigint AS count_sum,
       sum(d.speed_weighted_sum) AS speed_weighted_sum,
       sum(d.speed_count)::bigint AS speed_count,
       sum(d.intervals_present)::integer AS intervals_present,
       sum(d.intervals_estimated)::integer AS intervals_estimated,
       (extract(epoch FROM (make_date(extract(year FROM d.day)::integer + 1, 1, 1)::timestamp AT TIME ZONE tz.value)
                         - (make_date(extract(year FROM d.day)::integer, 1, 1)::timestamp AT TIME ZONE tz.value))::integer
        / c.time_step) AS intervals_expected,
       count(*)::integer AS days_with_data
  FROM rollup_daily d
  JOIN channels c ON c.id = d.channel_id
  CROSS JOIN (SELECT value FROM roadfeed_meta WHERE key = 'timezone') tz
 GROUP BY d.channel_id, extract(year FROM d.day), c.time_step, tz.value;

-- Every channel's hourly series: the rollup for channels finer than an hour,
-- the raw rows themselves for hourly channels (see feed/storage.py).
CREATE VIEW hourly AS
SELECT channel_id, bucket, count_sum, speed_weighted_sum, speed_count,
       intervals_present, intervals_estimated, intervals_expected
  FROM rollup_hourly
UNION ALL
SELECT m.channel_id, m.start, CASE WHEN q.ok THEN m.count ELSE 0 END::bigint,
       CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.speed::float8 * m.count ELSE 0 END,
       CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.count ELSE 0 END::bigint,
       q.ok::integer, (q.ok AND m.quality = 'estimated')::integer, 1
  FROM measurements m
  JOIN channels c ON c.id = m.channel_id AND c.time_step = 3600
  CROSS JOIN LATERAL (SELECT m.count IS NOT NULL AND m.quality IN ('observed', 'estimated') AS ok) q;
