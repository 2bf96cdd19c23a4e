-- Layers a GIS client (QGIS, GDAL's PostgreSQL driver) can add as they are.
--
-- PostGIS registers a column of type geometry(Geometry) in geometry_columns with
-- the first type it finds in a `GeometryType(geom) = ...` CHECK: the events
-- column, which holds points and lines, was listed as POINT. The check moves into
-- a function, so the catalogue says what the column is (GEOMETRY, mixed), and two
-- views publish each kind with its own type and SRID.

-- The search path is the one PostGIS was found in now: pg_restore runs the check
-- with an empty one.
CREATE FUNCTION roadfeed_point_or_line(g geometry) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path FROM CURRENT
    AS $$ SELECT GeometryType(g) IN ('POINT', 'LINESTRING') $$;

ALTER TABLE events DROP CONSTRAINT events_geom_check;
ALTER TABLE events ADD CONSTRAINT events_geom_point_or_line
    CHECK (geom IS NULL OR roadfeed_point_or_line(geom));

CREATE VIEW events_lines AS
SELECT id, source_id, external_id, version, type, subtype, status::text AS status, severity,
       planned_start, planned_end, actual_start, actual_end, road, direction, lanes_affected,
       descriptions ->> 'fr' AS description_fr, descriptions ->> 'en' AS description_en, detour,
       updated, geom::geometry(LineString, 4326) AS geom
  FROM events
 WHERE GeometryType(geom) = 'LINESTRING';

CREATE VIEW events_points AS
SELECT id, source_id, external_id, version, type, subtype, status::text AS status, severity,
       planned_start, planned_end, actual_start, actual_end, road, direction, lanes_affected,
       descriptions ->> 'fr' AS description_fr, descriptions ->> 'en' AS description_en, detour,
       updated, geom::geometry(Point, 4326) AS geom
  FROM events
 WHERE GeometryType(geom) = 'POINT';

GRANT SELECT ON events_lines, events_points TO roadfeed_reader;
GRANT SELECT ON events_lines, events_points TO roadfeed_writer;
