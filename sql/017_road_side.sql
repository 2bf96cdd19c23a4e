-- The side of the road in linear referencing: left or right of the road's
-- direction of increasing PR (the direction its line is drawn in), and a lateral
-- offset in metres (Lambert-93, within 0.1 % of the ground at the département's
-- latitudes). The direction at a position is that of the line over the next
-- centimetre (the last centimetre at the road's end).

-- Road + PR + abscissa + offset (metres, positive to the right, negative to the
-- left) -> point; NULL as for road_point(road, pr, abscissa).
CREATE FUNCTION road_point(p_road text, p_pr integer, p_abscissa double precision, p_offset double precision)
RETURNS geometry LANGUAGE sql STABLE AS $$
    WITH at AS (
        SELECT r.line, least(greatest((p.measure + p_abscissa) / r.length, 0), 1) AS f, 0.01 / r.length AS d
          FROM roads r JOIN road_prs p ON p.road = r.road
         WHERE r.road = p_road AND p.pr = p_pr
           AND p.measure + p_abscissa BETWEEN -0.01 AND r.length + 0.01),
    ends AS (
        SELECT ST_LineInterpolatePoint(line, f) AS o,
               ST_LineInterpolatePoint(line, least(f, 1 - d)) AS a,
               ST_LineInterpolatePoint(line, least(f, 1 - d) + d) AS b
          FROM at)
    SELECT ST_Transform(ST_Translate(o, p_offset * (ST_Y(b) - ST_Y(a)) / ST_Distance(a, b),
                                        -p_offset * (ST_X(b) - ST_X(a)) / ST_Distance(a, b)), 4326)
      FROM ends
$$;

-- Point -> the road's PR before it, the abscissa after that PR, the distance from
-- the point to the road (metres) and the side it lies on: 'left' or 'right' of
-- the direction of increasing PR, NULL within a centimetre of the line.
DROP FUNCTION road_locate(text, geometry);
CREATE FUNCTION road_locate(p_road text, p_point geometry,
                            OUT pr integer, OUT abscissa double precision, OUT offset_m double precision,
                            OUT side text)
LANGUAGE sql STABLE AS $$
    WITH m AS (
        SELECT r.road, r.line, r.length, ST_Transform(p_point, 2154) AS p,
               ST_LineLocatePoint(r.line, ST_Transform(p_point, 2154)) AS f, 0.01 / r.length AS d
          FROM roads r WHERE r.road = p_road),
    t AS (
        SELECT m.road, m.p, m.f * m.length AS measure, ST_Distance(m.line, m.p) AS offset_m,
               ST_LineInterpolatePoint(m.line, least(m.f, 1 - m.d)) AS a,
               ST_LineInterpolatePoint(m.line, least(m.f, 1 - m.d) + m.d) AS b
          FROM m)
    SELECT p.pr, t.measure - p.measure, t.offset_m,
           CASE WHEN t.offset_m < 0.01 THEN NULL
                WHEN (ST_X(t.b) - ST_X(t.a)) * (ST_Y(t.p) - ST_Y(t.a))
                     - (ST_Y(t.b) - ST_Y(t.a)) * (ST_X(t.p) - ST_X(t.a)) > 0 THEN 'left'
                ELSE 'right' END
      FROM t JOIN road_prs p ON p.road = t.road AND p.measure <= t.measure + 1e-6
     ORDER BY p.measure DESC LIMIT 1
$$;
