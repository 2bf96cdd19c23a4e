"""roadfeed core: configuration, domain model, storage, scheduling, HTTP wiring, CLI."""
