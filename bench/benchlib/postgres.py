"""The PostgreSQL server the benchmark measures on, reached with psql: the reference database,
warm caches, and the databases the benchmark makes and drops (all named bench_*)."""
from __future__ import annotations

import os
import subprocess
import time

from .project import REFERENCE_SQL

MIB = 1024 * 1024
REFERENCE_TABLES = ("users", "studies", "images", "diagnoses")


def pg_env(args) -> dict[str, str]:
    """This process's environment with libpq's PG* variables naming --pg-host, --pg-port and
    --pg-user only (PG_BIN_DIR and the like are the project's, not libpq's)."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PG") and not k.startswith("PG_"))}
    env.update(PGHOST=args.pg_host, PGPORT=str(args.pg_port), PGUSER=args.pg_user)
    return env


def psql(args, db: str, sql: str) -> str:
    return subprocess.run(["psql", "-X", "-At", "-d", db, "-c", sql], env=pg_env(args),
                          check=True, capture_output=True, text=True).stdout.strip()


def database_size(args, database: str) -> int:
    return int(psql(args, database, "SELECT pg_database_size(current_database())"))


def ensure_reference_db(args) -> None:
    """Load the reference data set into --database unless its four tables are there."""
    exists = psql(args, "postgres",
                  f"SELECT 1 FROM pg_database WHERE datname = '{args.database}'") == "1"
    names = ",".join(f"'{name}'" for name in REFERENCE_TABLES)
    loaded = exists and psql(args, args.database, "SELECT count(*) FROM pg_tables WHERE "
                             f"tablename IN ({names})") == str(len(REFERENCE_TABLES))
    if loaded:
        return
    sql_file = args.reference_sql or REFERENCE_SQL
    if not sql_file.is_file():
        raise SystemExit("database %s is missing and reference_db.sql was not found "
                         "(give --reference-sql)" % args.database)
    print(f"Loading {sql_file} into {args.database} (about 70 s)...", flush=True)
    if not exists:
        subprocess.run(["createdb", args.database], env=pg_env(args), check=True)
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "scale=1", "-d", args.database, "-f", str(sql_file)],
                   env=pg_env(args), check=True, stdout=subprocess.DEVNULL)
    print(f"  loaded in {time.perf_counter() - started:.0f} s", flush=True)


def warm_cache(args, database: str | None = None) -> None:
    """Read every table once so the first measured run does not pay for a cold page cache (nor,
    on a freshly restored database, for setting every row's hint bits)."""
    database = database or args.database
    tables = psql(args, database,
                  "SELECT string_agg(format('%I.%I', schemaname, tablename), ',') FROM pg_tables "
                  "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    for table in filter(None, tables.split(",")):
        psql(args, database, f"SELECT count(*) FROM {table}")


def checkpoint(args) -> None:
    """Write the previous command's dirty buffers out now, so the next measured command does not
    pay for them."""
    psql(args, "postgres", "CHECKPOINT")


def drop_database(args, name: str) -> None:
    psql(args, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def databases_named(args, prefix: str) -> list[str]:
    names = psql(args, "postgres", "SELECT datname FROM pg_database").split("\n")
    return [n for n in names if n.startswith(prefix)]
