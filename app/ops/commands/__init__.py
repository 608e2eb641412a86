"""app/ops/commands."""
