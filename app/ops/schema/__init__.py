"""The schema: `migrations` (Alembic through its Python API), `review` (risky operations and the
data a rollback drops, read from the revision files), `revisions` (`invoke create`).
"""
