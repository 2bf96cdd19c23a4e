-- Several collector processes may share one database: a source is polled by the
-- worker that claims it when it is due (next_poll_at), under a lease, so it is
-- polled once per interval and never by two workers at once.
ALTER TABLE sources ADD COLUMN next_poll_at timestamptz;
