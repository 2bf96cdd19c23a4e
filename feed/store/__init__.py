"""Storage: the only package with SQL (the pool, writes, history, downloads, migrations, clusters)."""
