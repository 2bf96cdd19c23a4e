"""Plausibility tests of every counted interval, run by each ingest before the
rollups are refreshed, so that a figure never includes what the tests reject.

An interval is judged against its channel's own recent history (the 28 days
before the batch and the batch itself) and its neighbours at the same site (the
other direction, the other vehicle classes). A rejected interval keeps its raw
value and its source quality; `measurements.validation` becomes 'invalid' and
`measurements.flag` names the test. Invalid intervals are not present, so they
lower coverage and never reach a sum. Only intervals the source calls observed
are judged: estimated, missing or invalid ones stay as the source sent them.

Rates are per hour (count x 3600 / interval length), so one rule fits every time
step. The tests are tried in the order of REASONS; the first that fails is the flag.
"""

from __future__ import annotations

from datetime import timedelta

# Reason codes: the quality vocabulary of the API, the downloads and the page.
REASONS: dict[str, dict[str, str]] = {
    "spike": {
        "en": "more than 4 times the channel's usual high (95th percentile of its hourly rate) plus 20 vehicles/h",
        "fr": "plus de 4 fois le maximum habituel du canal (95e centile de son débit horaire) plus 20 véh./h",
    },
    "stuck_zero": {
        "en": "zero in daytime (08:00-19:00 local) for 3 intervals in a row on a channel whose daytime median "
        "is at least 10 vehicles/h",
        "fr": "zéro en journée (8 h-19 h) pendant 3 intervalles consécutifs sur un canal dont la médiane "
        "de jour atteint au moins 10 véh./h",
    },
    "silent_direction": {
        "en": "zero while the other direction of the same site and class carries at least 60 vehicles/h",
        "fr": "zéro alors que l'autre sens du même site et de la même classe écoule au moins 60 véh./h",
    },
    "flat_line": {
        "en": "the same count, at least 20 vehicles/h, for 5 intervals in a row (a frozen counter)",
        "fr": "le même comptage, d'au moins 20 véh./h, pendant 5 intervalles consécutifs (compteur figé)",
    },
    "class_inconsistent": {
        "en": "light + heavy differs from all vehicles by more than 5 % (and 2 vehicles) at the same site, "
        "direction and time",
        "fr": "véhicules légers + poids lourds diffère de tous véhicules de plus de 5 % (et 2 véhicules) "
        "au même site, sens et instant",
    },
}

HISTORY = timedelta(days=28)  # the norms: this much history before the batch
CONTEXT = 8  # intervals read on each side of the batch (a channel's neighbours in time)
REVISED = 4  # intervals on each side of the batch whose judgement a new row can change

# $1 channel ids of the batch, $2 first and $3 last interval start of the batch,
# $4 the time zone of local hours. Updates the judgement of every interval of
# the batch's sites within REVISED intervals of it and returns those that changed.
VALIDATE = f"""
WITH chans AS MATERIALIZED (
    SELECT c.id, c.site_id, c.direction, c.vehicle_class, c.time_step * interval '1 second' AS step
      FROM channels c
     WHERE c.site_id IN (SELECT site_id FROM channels WHERE id = ANY($1::int[]))),
norms AS MATERIALIZED (  -- one row of arrays (channel ids, their norms), read by position: no join to misplan
    SELECT array_agg(channel_id) AS ids, array_agg(high) AS high, array_agg(day_median) AS day_median
      FROM (SELECT m.channel_id,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY m.count * 3600.0 / m.length) AS high,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY m.count * 3600.0 / m.length)
                       FILTER (WHERE extract(hour FROM m.start AT TIME ZONE $4) BETWEEN 8 AND 18) AS day_median
              FROM chans c
              JOIN measurements m ON m.channel_id = c.id  -- an index range per channel
             WHERE m.start >= $2::timestamptz - interval '{HISTORY.days} days' AND m.start <= $3::timestamptz
               AND m.count IS NOT NULL AND m.quality = 'observed'
             GROUP BY m.channel_id) g),
w AS (
    SELECT m.channel_id, m.start, m.count, m.quality, m.flag, c.site_id, c.direction, c.vehicle_class, c.step,
           m.count * 3600.0 / m.length AS rate, extract(hour FROM m.start AT TIME ZONE $4) AS local_hour,
           m.count IS NOT NULL AND m.quality = 'observed' AS judged
      FROM measurements m
      JOIN chans c ON c.id = m.channel_id
     WHERE m.start >= $2::timestamptz - {CONTEXT} * c.step AND m.start <= $3::timestamptz + {CONTEXT} * c.step),
-- Neighbours in time (the same channel) and at the same instant (the other
-- direction, the other classes) by window functions: no join, whatever the row
-- estimates.
x AS (
    SELECT w.*,
           lag(count, 4) OVER s AS p4, lag(count, 3) OVER s AS p3, lag(count, 2) OVER s AS p2,
           lag(count) OVER s AS p1, lead(count) OVER s AS n1, lead(count, 2) OVER s AS n2,
           lead(count, 3) OVER s AS n3, lead(count, 4) OVER s AS n4,
           max(rate) FILTER (WHERE judged AND direction IS NOT NULL) OVER (PARTITION BY site_id, vehicle_class, start)
               AS busiest,
           sum(count) FILTER (WHERE judged AND vehicle_class IN ('light', 'heavy')) OVER k AS parts,
           count(*) FILTER (WHERE judged AND vehicle_class IN ('light', 'heavy')) OVER k AS n_parts,
           sum(count) FILTER (WHERE judged AND vehicle_class = 'all') OVER k AS whole,
           count(*) FILTER (WHERE judged AND vehicle_class = 'all') OVER k AS n_whole
      FROM w
    WINDOW s AS (PARTITION BY channel_id ORDER BY start), k AS (PARTITION BY site_id, direction, start)),
judged AS (
    SELECT x.channel_id, x.start, x.flag,
           CASE
             WHEN NOT x.judged THEN NULL
             WHEN x.rate > 4 * n.high[array_position(n.ids, x.channel_id)] + 20 THEN 'spike'
             WHEN x.count = 0 AND x.local_hour BETWEEN 8 AND 18
                  AND n.day_median[array_position(n.ids, x.channel_id)] >= 10
                  AND ((x.p1 = 0 AND x.p2 = 0) OR (x.p1 = 0 AND x.n1 = 0) OR (x.n1 = 0 AND x.n2 = 0))
               THEN 'stuck_zero'
             WHEN x.count = 0 AND x.direction IS NOT NULL AND x.busiest >= 60 THEN 'silent_direction'
             WHEN x.rate >= 20 AND ((x.count = x.p4 AND x.count = x.p3 AND x.count = x.p2 AND x.count = x.p1)
                                 OR (x.count = x.p3 AND x.count = x.p2 AND x.count = x.p1 AND x.count = x.n1)
                                 OR (x.count = x.p2 AND x.count = x.p1 AND x.count = x.n1 AND x.count = x.n2)
                                 OR (x.count = x.p1 AND x.count = x.n1 AND x.count = x.n2 AND x.count = x.n3)
                                 OR (x.count = x.n1 AND x.count = x.n2 AND x.count = x.n3 AND x.count = x.n4))
               THEN 'flat_line'
             WHEN x.vehicle_class IN ('light', 'heavy') AND x.n_parts = 2 AND x.n_whole = 1
                  AND abs(x.parts - x.whole) > greatest(2, 0.05 * x.whole) THEN 'class_inconsistent'
           END AS new_flag
      FROM x CROSS JOIN norms n
     WHERE x.start >= $2::timestamptz - {REVISED} * x.step AND x.start <= $3::timestamptz + {REVISED} * x.step),
changed AS MATERIALIZED (SELECT * FROM judged WHERE flag IS DISTINCT FROM new_flag)
UPDATE measurements m
   SET validation = CASE WHEN j.new_flag IS NULL THEN NULL ELSE 'invalid' END, flag = j.new_flag
  FROM changed j
 WHERE m.channel_id = j.channel_id AND m.start = j.start
   -- the widest reach (4 daily intervals), so that a hypertable reads only the chunks concerned
   AND m.start >= $2::timestamptz - interval '{REVISED} days' AND m.start <= $3::timestamptz + interval '{REVISED} days'
RETURNING m.channel_id, m.start"""
