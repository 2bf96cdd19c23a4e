"""Output formats: pure functions from stored domain objects to bytes."""
