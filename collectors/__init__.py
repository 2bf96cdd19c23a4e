"""Source kinds: fetchers (network, state) and pure parsers (bytes -> records)."""
