-- The département's road referential: each road's PR (points de repère) as points,
-- and the road's line (its shape, or its PR joined in PR order) in Lambert-93
-- (EPSG:2154), a conformal projection whose scale is constant along a road to
-- 1e-5, so a position's share of the line's length is its share on the ground.
-- `length` and `measure` (a PR's distance from the start of the line) are metres
-- on the ellipsoid.
CREATE TABLE roads (
    road   text PRIMARY KEY CHECK (length(road) BETWEEN 1 AND 64),
    name   text NOT NULL DEFAULT '',
    line   geometry(LineString, 2154) NOT NULL,
    length double precision NOT NULL CHECK (length > 0),
    updated timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE road_prs (
    road    text NOT NULL REFERENCES roads (road) ON DELETE CASCADE,
    pr      integer NOT NULL CHECK (pr >= 0),
    geom    geometry(Point, 4326) NOT NULL,
    measure double precision NOT NULL CHECK (measure >= 0),
    PRIMARY KEY (road, pr)
);

-- Road + PR + abscissa (metres after the PR, negative before it) -> point; NULL
-- when the road or PR is unknown or the position falls off the road.
CREATE FUNCTION road_point(p_road text, p_pr integer, p_abscissa double precision)
RETURNS geometry LANGUAGE sql STABLE AS $$
    SELECT ST_Transform(ST_LineInterpolatePoint(
               r.line, least(greatest((p.measure + p_abscissa) / r.length, 0), 1)), 4326)
      FROM roads r JOIN road_prs p ON p.road = r.road
     WHERE r.road = p_road AND p.pr = p_pr
       AND p.measure + p_abscissa BETWEEN -0.01 AND r.length + 0.01  -- a centimetre for rounding
$$;

-- Point -> the road's PR before it, the abscissa after that PR, and the distance
-- from the point to the road (metres).
CREATE FUNCTION road_locate(p_road text, p_point geometry,
                            OUT pr integer, OUT abscissa double precision, OUT offset_m double precision)
LANGUAGE sql STABLE AS $$
    WITH m AS (
        SELECT r.road, ST_LineLocatePoint(r.line, ST_Transform(p_point, 2154)) * r.length AS measure,
               ST_Distance(r.line, ST_Transform(p_point, 2154)) AS offset_m
          FROM roads r WHERE r.road = p_road)
    SELECT p.pr, m.measure - p.measure, m.offset_m
      FROM m JOIN road_prs p ON p.road = m.road AND p.measure <= m.measure + 1e-6
     ORDER BY p.measure DESC LIMIT 1
$$;

-- From (PR, abscissa) to (PR, abscissa): the line along the road between them,
-- in the order given (from -> to), so the direction of travel is kept.
CREATE FUNCTION road_section(p_road text, p_pr_from integer, p_abs_from double precision,
                             p_pr_to integer, p_abs_to double precision)
RETURNS geometry LANGUAGE sql STABLE AS $$
    WITH ends AS (
        SELECT r.line, r.length, least(greatest(a.measure + p_abs_from, 0), r.length) AS m1,
               least(greatest(b.measure + p_abs_to, 0), r.length) AS m2,
               a.measure + p_abs_from BETWEEN -0.01 AND r.length + 0.01
               AND b.measure + p_abs_to BETWEEN -0.01 AND r.length + 0.01 AS on_road
          FROM roads r
          JOIN road_prs a ON a.road = r.road AND a.pr = p_pr_from
          JOIN road_prs b ON b.road = r.road AND b.pr = p_pr_to
         WHERE r.road = p_road)
    SELECT ST_Transform(CASE WHEN m1 <= m2 THEN ST_LineSubstring(line, m1 / length, m2 / length)
                             ELSE ST_Reverse(ST_LineSubstring(line, m2 / length, m1 / length)) END, 4326)
      FROM ends
     WHERE on_road AND m1 <> m2
$$;

GRANT SELECT ON roads, road_prs TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON roads, road_prs TO roadfeed_writer;
