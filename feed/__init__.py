"""roadfeed core, in the order data flows: base modules here (configuration, model, errors,
logs, metrics, CLI), then store (the only SQL), collect, publish, http, server, and the
simulator apart. The layers are checked by import-linter (pyproject.toml)."""
