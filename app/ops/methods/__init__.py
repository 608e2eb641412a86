"""app/ops/methods."""
