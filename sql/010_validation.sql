-- Validation of every interval. The source's value and quality stay as they
-- came; `validation` says what our plausibility tests concluded ('invalid':
-- left out of every aggregate, so coverage counts valid intervals only) and
-- `flag` why (a reason code, see feed/validation.py). NULL: nothing to say.
ALTER TABLE measurements ADD COLUMN validation text CHECK (validation IN ('invalid'));
ALTER TABLE measurements ADD COLUMN flag text;

-- When a channel is expected to deliver data (NULL: unbounded). A site-day's
-- coverage counts every expected channel, whether it sent anything or not.
ALTER TABLE channels ADD COLUMN valid_from date;
ALTER TABLE channels ADD COLUMN valid_to date CHECK (valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from);

-- The hourly series of hourly channels: invalid intervals are not present.
CREATE OR REPLACE VIEW hourly AS
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
  CROSS JOIN LATERAL (SELECT m.count IS NOT NULL AND m.quality IN ('observed', 'estimated')
                             AND m.validation IS NULL AS ok) q;

-- The rejected intervals of a channel and period, for the reasons shown with
-- every figure: a probe of this small index instead of a scan of the raw rows.
CREATE INDEX measurements_invalid ON measurements (channel_id, start) WHERE validation IS NOT NULL;
