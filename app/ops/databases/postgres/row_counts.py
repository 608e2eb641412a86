"""Exact row counts of a PostgreSQL database's user tables, in batches: a dump counts in its
own snapshot (dumper.py), a scratch copy nobody writes to counts as it is (database.py).
"""
from __future__ import annotations

# Tables counted per transaction. A count locks its table and the indexes the planner opens
# until its transaction ends: counting every table in one transaction beside pg_dump (which
# locks every table too) needed twice pg_dump's locks, and ran the server's lock table out of
# shared memory where pg_dump alone fits (issue 17, case 6).
COUNT_BATCH = 25


def user_tables(conn) -> list[str]:
    """Every user table, `schema.table` quoted as SQL needs it, in conn's snapshot."""
    from sqlalchemy import text

    return conn.execute(text(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg!_%' ESCAPE '!' ORDER BY 1")).scalars().all()


def count_in_batches(conn, tables: list[str], start=None, stopped=lambda: False) -> dict:
    """Exact row counts of `tables`, COUNT_BATCH to a transaction; `start(conn)` opens each
    one (a snapshot imported, a lock timeout). `conn` must not be in a transaction."""
    from sqlalchemy import text

    counts: dict[str, int] = {}
    for i in range(0, len(tables), COUNT_BATCH):
        if stopped():
            break
        with conn.begin():
            if start is not None:
                start(conn)
            for table in tables[i:i + COUNT_BATCH]:
                counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    return counts


def postgres_row_counts(conn) -> dict[str, int]:
    """Exact row counts of every user table, keyed `schema.table` (a database nobody writes
    to: a scratch copy; a dump counts in its own snapshot instead)."""
    with conn.begin():
        tables = user_tables(conn)
    return count_in_batches(conn, tables)
