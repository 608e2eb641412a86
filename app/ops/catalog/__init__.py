"""app/ops/catalog."""
