"""app/ops/schema."""
