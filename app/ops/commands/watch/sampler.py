"""Reading the signals: `PostgresSampler` (one read-only connection, a short statement_timeout,
application_name `mida-watch`, a few catalog queries per sample) and `probe_health` (the
application's health URL, 2 s at most). `SqliteSampler` reads only the health URL: SQLite keeps
no statistics a watch could compare.

Every query of the watch's own starts with `/* mida-watch */`, so the watch leaves its own
statements out of pg_stat_statements' figures. A signal that cannot be read is recorded in the
sample's `unreadable` with what would let it be read; the other signals go on.
"""
from __future__ import annotations

from app.ops.databases.connection import first_line
from app.ops.errors import DatabaseUnreachable
from app.ops.commands.watch.facts import LockWait, Sample, mask_literals, shorten

APPLICATION_NAME = "mida-watch"
MARK = "/* mida-watch */ "
HEALTH_TIMEOUT = 2.0
STATEMENTS, SEQ_SCANS, ROLLBACKS, DEADLOCKS = ("statement_latency", "seq_scan_rows",
                                               "rollbacks", "deadlocks")
LOCK_WAITS, REPLICA_LAG, HEALTH = "lock_waits", "replica_lag", "health_url"

DATABASE_SQL = MARK + ("SELECT xact_rollback, deadlocks FROM pg_stat_database "
                       "WHERE datname = current_database()")
TABLES_SQL = MARK + "SELECT schemaname || '.' || relname, seq_tup_read FROM pg_stat_user_tables"
# showtext := false: the texts (read from a file) are fetched once, for the baseline's statements.
STATEMENTS_SQL = MARK + (
    "SELECT userid::text || ':' || queryid::text, calls, total_exec_time "
    "FROM pg_stat_statements(false) "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND queryid IS NOT NULL")
TEXTS_SQL = MARK + (
    "SELECT userid::text || ':' || queryid::text, query FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
# pg_blocking_pids is costly, so it runs only for the sessions that are waiting on a lock.
LOCKS_SQL = MARK + (
    "SELECT w.pid, extract(epoch FROM clock_timestamp() - {started}), w.query, "
    "l.relation::regclass::text, b.pid, b.query "
    "FROM pg_locks l JOIN pg_stat_activity w ON w.pid = l.pid "
    "LEFT JOIN LATERAL (SELECT p AS pid FROM unnest(pg_blocking_pids(w.pid)) p LIMIT 1) bp "
    "ON true LEFT JOIN pg_stat_activity b ON b.pid = bp.pid "
    "WHERE NOT l.granted AND w.datname = current_database() AND w.pid <> pg_backend_pid()")
REPLICAS_SQL = MARK + ("SELECT coalesce(application_name, client_addr::text, pid::text), "
                       "extract(epoch FROM replay_lag), state FROM pg_stat_replication")
CAPABILITIES_SQL = MARK + (
    "SELECT current_setting('server_version_num')::int, current_user, current_database(), "
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
    "OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'), "
    "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')")


def mask_url(url: str) -> str:
    """The health URL without credentials or query string (either may hold a token)."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def probe_health(url: str) -> tuple[bool, str]:
    """(healthy, what was seen): a 2xx answer within 2 s is healthy."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if "timed out" in str(reason):
            return False, f"no answer within {HEALTH_TIMEOUT:g} s"
        return False, f"no answer ({first_line(reason)})"
    return (200 <= status < 300), f"HTTP {status}"


class SqliteSampler:
    """SQLite: the application's health URL only."""
    notes: list[str]

    def __init__(self, health_url: str | None, clock):
        self.health_url, self.clock = health_url, clock
        self.notes = ["SQLite keeps no statement, table, lock or replication statistics: only "
                      "the application's health URL (WATCH_HEALTH_URL) is watched"]

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def statement_texts(self, keys) -> dict[str, str]:
        return {}

    def sample(self) -> Sample:
        sample = Sample(at=self.clock())
        _probe_into(sample, self.health_url)
        return sample


def _probe_into(sample: Sample, url: str | None) -> None:
    if url:
        sample.health_ok, sample.health_detail = probe_health(url)


class PostgresSampler:
    """One connection for the whole watch, read-only, timing out fast."""

    def __init__(self, url, health_url: str | None, clock, interval: float):
        self.url, self.health_url, self.clock = url, health_url, clock
        # A sample must never take longer than the interval it serves.
        self.timeout_ms = int(max(200, min(2000, interval * 500)))
        self.engine = self.conn = None
        self.notes: list[str] = []
        self.version = 0
        self.has_statements = False
        self.statements_reason = ""

    def open(self) -> None:
        from sqlalchemy import create_engine, pool
        from sqlalchemy.exc import DBAPIError

        own = self.url.query.get("options")
        options = (f"{own if isinstance(own, str) else ''} -c statement_timeout="
                   f"{self.timeout_ms} -c lock_timeout={self.timeout_ms} "
                   "-c default_transaction_read_only=on").strip()
        self.engine = create_engine(self.url, poolclass=pool.NullPool,
                                    isolation_level="AUTOCOMMIT",
                                    connect_args={"options": options,
                                                  "application_name": APPLICATION_NAME})
        try:
            self.conn = self.engine.connect()
        except DBAPIError as exc:
            self.close()
            raise DatabaseUnreachable(f"the watch cannot connect to the database: "
                                      f"{first_line(exc.orig)}") from None
        self._capabilities()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.engine is not None:
            self.engine.dispose()
        self.conn = self.engine = None

    def _capabilities(self) -> None:
        self.version, role, database, privileged, extension = self._rows(CAPABILITIES_SQL)[0]
        if not privileged:
            self.notes.append(
                f"role {role} is not a member of pg_read_all_stats: other roles' statements, "
                f"session queries and replica lag are hidden from the watch (GRANT "
                f"pg_read_all_stats TO {role})")
        if not extension:
            self.statements_reason = (
                f"pg_stat_statements is not installed in database {database}: add it to "
                "shared_preload_libraries (a server restart) and run CREATE EXTENSION "
                f"pg_stat_statements in {database}")
        elif self.version < 130000:
            self.statements_reason = "statement latency needs PostgreSQL 13 or newer"
        else:
            self.has_statements = True

    def _rows(self, sql: str, **params):
        return [tuple(r) for r in self.conn.exec_driver_sql(sql, params or None).fetchall()]

    def sample(self) -> Sample:
        sample = Sample(at=self.clock())
        started = self.clock()
        self._read(sample, (ROLLBACKS, DEADLOCKS), self._database)
        self._read(sample, (SEQ_SCANS,), self._tables)
        if self.has_statements:
            self._read(sample, (STATEMENTS,), self._statements)
        else:
            sample.unreadable[STATEMENTS] = self.statements_reason
        self._read(sample, (LOCK_WAITS,), self._locks)
        self._read(sample, (REPLICA_LAG,), self._replicas)
        sample.own_seconds = self.clock() - started
        _probe_into(sample, self.health_url)
        return sample

    def _read(self, sample: Sample, names, read) -> None:
        from sqlalchemy.exc import DBAPIError

        try:
            read(sample)
        except DBAPIError as exc:
            reason = first_line(exc.orig)
            if "shared_preload_libraries" in reason:
                self.has_statements = False
                self.statements_reason = ("pg_stat_statements is installed but not loaded: add "
                                          "it to shared_preload_libraries and restart the server")
                reason = self.statements_reason
            for name in names:
                sample.unreadable[name] = f"could not be read: {reason}"

    def _database(self, sample: Sample) -> None:
        rows = self._rows(DATABASE_SQL)
        sample.rollbacks, sample.deadlocks = (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def _tables(self, sample: Sample) -> None:
        sample.seq_rows = {name: int(rows or 0) for name, rows in self._rows(TABLES_SQL)}

    def _statements(self, sample: Sample) -> None:
        sample.statements = {key: (int(calls), float(total))
                             for key, calls, total in self._rows(STATEMENTS_SQL)}

    def _locks(self, sample: Sample) -> None:
        started = "coalesce(l.waitstart, w.query_start)" if self.version >= 140000 \
            else "w.query_start"
        sample.lock_waits = [
            LockWait(pid, float(waited or 0), mask_literals(query), relation, blocker,
                     mask_literals(blocker_query) if blocker else "?")
            for pid, waited, query, relation, blocker, blocker_query
            in self._rows(LOCKS_SQL.format(started=started))]

    def _replicas(self, sample: Sample) -> None:
        lags = {}
        for name, lag, state in self._rows(REPLICAS_SQL):
            if lag is None and state is None:
                sample.unreadable[REPLICA_LAG] = ("replica lag is hidden from this role: GRANT "
                                                  "pg_read_all_stats to it")
                return
            lags[str(name)] = float(lag or 0)   # no lag shown: caught up and idle
        sample.replica_lag = lags

    def statement_texts(self, keys) -> dict[str, str]:
        """The normalised text ($1 for every literal) of these statements, cut short."""
        from sqlalchemy.exc import DBAPIError

        wanted = set(keys)
        if not wanted or not self.has_statements:
            return {}
        try:
            return {key: shorten(text) for key, text in self._rows(TEXTS_SQL) if key in wanted}
        except DBAPIError:
            return {}
