"""app/ops/methods/pgbackrest."""
