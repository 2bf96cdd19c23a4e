-- The HTTP API reads through roadfeed_reader; only the collectors (roadfeed_writer)
-- write. Roles belong to the cluster, so create them once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roadfeed_reader') THEN
        CREATE ROLE roadfeed_reader LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roadfeed_writer') THEN
        CREATE ROLE roadfeed_writer LOGIN;
    END IF;
END
$$;
ALTER ROLE roadfeed_reader SET default_transaction_read_only = on;

GRANT USAGE ON SCHEMA public TO roadfeed_reader, roadfeed_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO roadfeed_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO roadfeed_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO roadfeed_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO roadfeed_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO roadfeed_writer;
