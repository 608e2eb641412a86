"""app/ops/databases/sqlite."""
