-- Measurements are a hypertable where TimescaleDB is installed (the runner
-- creates the extension when the server preloads it); elsewhere a plain table
-- whose BRIN index keeps time-range scans and retention deletes cheap.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('measurements', 'start',
                                  chunk_time_interval => interval '7 days');
    ELSE
        CREATE INDEX measurements_start_brin ON measurements USING brin (start);
    END IF;
END
$$;
