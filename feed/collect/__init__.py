"""Collection: the poll of one source, the ingest sink, the scheduler and worker claims."""
