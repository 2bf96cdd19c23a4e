-- History reads (a site's daily series, the annual table, the daily bulk file)
-- take a few channels' days in order. The daily rollup is written day after day
-- for all channels at once, so one channel's year is spread over ~365 heap
-- pages; with its values in the index, the same read is an index-only scan of
-- consecutive entries (about 10x fewer pages touched). The cost is one more
-- index entry per rollup row written, a small fraction of an ingest (a daily row
-- stands for 24 to 288 measurement rows).
CREATE INDEX rollup_daily_series ON rollup_daily (channel_id, day)
    INCLUDE (count_sum, speed_weighted_sum, speed_count, intervals_present, intervals_estimated,
             intervals_expected);
