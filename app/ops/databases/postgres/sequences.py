"""Are a database's sequences ahead of the columns they feed? A restore whose sequence is
behind its column looks whole (every row is there) but fails the application's first insert
with a duplicate key, so a restore-test checks it on the scratch copy.

PostgreSQL: every sequence owned by a column (serial, or an identity column), its next value
against the column's largest (smallest, for a descending one). SQLite picks a new row's id
beyond the largest in the table itself (and AUTOINCREMENT's sqlite_sequence beyond the largest
ever), so it has nothing that can fall behind.
"""
from __future__ import annotations
from app.ops.databases.connection import connect

OWNED_SEQUENCES = """
SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname),
       quote_ident(a.attname), a.attname, ps.last_value, ps.start_value, ps.increment_by
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = s.relname
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i')
ORDER BY 1
"""


def sequences_behind(database) -> tuple[int, list[str]]:
    """(how many sequences were checked, one line per sequence behind its column)."""
    if database.kind != "postgresql":
        return 0, []
    from sqlalchemy import text


    behind = []
    with connect(database.url) as conn:
        rows = conn.execute(text(OWNED_SEQUENCES)).all()
        for sequence, table, column, plain, last, start, step in rows:
            upward = step > 0
            edge = conn.execute(text(
                f"SELECT {'max' if upward else 'min'}({column}) FROM {table}")).scalar()
            if edge is None:
                continue
            following = start if last is None else last + step
            if (following <= edge) if upward else (following >= edge):
                behind.append(f"sequence {sequence} would give {following} next, but "
                              f"{table}.{plain} already holds {edge}")
    return len(rows), behind
