"""app/ops/guards."""
