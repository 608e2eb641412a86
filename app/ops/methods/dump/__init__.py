"""app/ops/methods/dump."""
