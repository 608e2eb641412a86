"""app/ops/databases/postgres."""
