"""Which of the server's settings applied to a session, and where it was set: a failure caused
by a setting names the one that acted (a role's `ALTER ROLE ... SET statement_timeout`, the
server's configuration file), not a setting of ours that was never set.

Asked over a plain session of the role, as the migration's own was before it set anything:
`current_setting` and `pg_settings.source` then say what the role, the database or the server
gave it.
"""
from __future__ import annotations

# pg_settings.source -> where that is, in words a DBA knows.
_WHERE = {
    "user": "set for role {role} (ALTER ROLE {role} SET {name})",
    "database": "set for database {database} (ALTER DATABASE {database} SET {name})",
    "database user": "set for role {role} in database {database} (ALTER ROLE {role} IN "
                     "DATABASE {database} SET {name})",
    "configuration file": "set in the server's configuration{file}",
    "client": "set by the connection's options (the database URL's `options`)",
    "environment variable": "set by the server's environment (PGOPTIONS)",
}


def describe(source: str, *, name: str, value: str, role: str, database: str,
             sourcefile: str | None = None, sourceline: int | None = None) -> str:
    """`name = value` and where it came from, from one pg_settings row's facts."""
    file = f" ({sourcefile}:{sourceline})" if sourcefile else " (postgresql.conf)"
    where = _WHERE.get(source, "from {source}").format(role=role, database=database, name=name,
                                                       file=file, source=source)
    return f"{name} = {value} {where}"


def applied_setting(url, name: str) -> str | None:
    """`describe()` of setting `name` in a fresh session of `url`'s role on its database;
    None when the server cannot be asked (the failure being reported says enough then)."""
    from sqlalchemy import create_engine, pool, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT current_setting(name) AS value, source, sourcefile, sourceline, "
                "current_user AS role, current_database() AS database "
                "FROM pg_settings WHERE name = :name"), {"name": name}).one()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return describe(row.source, name=name, value=row.value, role=row.role,
                    database=row.database, sourcefile=row.sourcefile, sourceline=row.sourceline)
