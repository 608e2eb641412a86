"""Alembic through its Python API: the scripts on disk and the database's state.

`Migrations(target)` answers current, heads, pending (in apply order) and the downgrade path,
and runs upgrade, downgrade, stamp, merge and revision. Alembic's own errors become ConfigError
(a bad revision) or MigrationFailed (the migration itself).
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from app.ops.databases.connection import first_line
from app.ops.errors import ConfigError, MigrationFailed, OpsError
from app.ops.report import Reporter
from app.settings import PROJECT_ROOT
from app.ops.databases.postgres.server_settings import applied_setting
from app.ops.interruptible import cancellable_statements

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
RELATIVE_RE = re.compile(r"^-(\d+)$")
LOCK_NOT_AVAILABLE, QUERY_CANCELED = "55P03", "57014"


def postgres_timeouts(settings) -> dict[str, str]:
    """The migrations' sessions' timeouts. lock_timeout in every env: an ALTER waiting for a
    busy table holds up every write queued behind it, so it gives up after this long (and is
    tried again, see LockRetries). statement_timeout only when set; else the role's own."""
    timeouts = {"lock_timeout": settings.MIGRATION_LOCK_TIMEOUT,
                "statement_timeout": settings.MIGRATION_STATEMENT_TIMEOUT}
    return {k: v.text for k, v in timeouts.items() if v is not None and v.text}


@dataclass(frozen=True)
class LockRetries:
    """What strong_migrations and GitLab do on a lock timeout: the migration's transaction is
    rolled back (the API's writes go on meanwhile) and the migration is tried again after a
    pause, `retries` times, the pause doubling each time."""
    retries: int
    delay: float  # seconds before the first retry

    @classmethod
    def of(cls, settings) -> "LockRetries":
        return cls(settings.MIGRATION_LOCK_RETRIES, float(settings.MIGRATION_LOCK_RETRY_DELAY))

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def pause(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return self.delay * 2 ** (attempt - 1)


class UnknownRevision(ConfigError):
    """The database is stamped with a revision no file in alembic/versions has."""


def unknown_revision_advice(revision: str, env: str) -> str:
    return (f"the database is at revision {revision}, which is not in alembic/versions (its "
            "file was removed, or is not pulled yet): pull the code that has it, or, once you "
            f"know which known revision the schema matches, record it with `invoke stamp "
            f"--env={env} REV` (`invoke history` lists them)")


class UnloadableRevisionFile(ConfigError):
    """A file in alembic/versions cannot be imported (a syntax error, a bad import)."""


def load_revision_files(script) -> None:
    """Import every revision file once, as Alembic does on first use, and turn a file that
    cannot be imported into one sentence naming the file, the line and the error."""
    try:
        script.revision_map.heads  # noqa: B018 (the property imports every file)
    except SyntaxError as exc:
        source = f" in `{exc.text.strip()}`" if (exc.text or "").strip() else ""
        raise UnloadableRevisionFile(_unloadable(exc.filename, exc.lineno,
                                                 exc.msg + source)) from None
    except Exception as exc:  # raised at a file's top level: NameError, ImportError...
        frame = _innermost_frame_in(exc, Path(script.dir))
        if frame is None:
            raise
        raise UnloadableRevisionFile(_unloadable(frame.filename, frame.lineno,
                                                 f"{type(exc).__name__}: {exc}")) from None


def _innermost_frame_in(exc, folder: Path):
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().is_relative_to(folder.resolve())]
    return frames[-1] if frames else None


def _unloadable(filename, line, error: str) -> str:
    path = Path(filename or "?")
    shown = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
    return (f"revision file {shown} line {line or '?'} cannot be loaded: {error}; fix it, or "
            "move it out of alembic/versions, before any migration runs")


def _statement(exc) -> str:
    return " ".join(str(exc.statement or "").split())[:120]


@dataclass(frozen=True)
class Revision:
    id: str
    message: str
    path: str
    down_revision: str | tuple | None

    @classmethod
    def of(cls, script) -> "Revision":
        return cls(script.revision, (script.doc or "").strip(), script.path, script.down_revision)

    def __str__(self) -> str:
        return f"{self.id} ({self.message})" if self.message else self.id


class Migrations:
    def __init__(self, target, reporter: Reporter = Reporter()):
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        self.settings, self.database = target.settings, target.database
        self.config = Config(str(ALEMBIC_INI))
        # The URL object itself, as Alembic's cookbook passes a connection's details
        # (alembic/env.py): never a string with the password in it, through configparser.
        self.config.attributes["database_url"] = target.database.url
        self.script = ScriptDirectory.from_config(self.config)
        load_revision_files(self.script)  # a file that cannot load refuses before any lock
        self.config.attributes["postgres_timeouts"] = postgres_timeouts(target.settings)
        self.lock_retries = LockRetries.of(target.settings)
        self.reporter = reporter

    # -- reading state ---------------------------------------------------------------------
    def heads(self) -> list[str]:
        return list(self.script.get_heads())

    def single_head(self) -> str:
        heads = self.heads()
        if len(heads) > 1:
            raise ConfigError(f"the migrations have {len(heads)} heads ({', '.join(heads)}): "
                              "join them with `invoke merge` before migrating")
        return heads[0] if heads else None

    def current(self) -> str | None:
        """The database's revision; None when it has none yet (or does not exist yet)."""
        return self.database.revision()

    def resolve(self, revision: str) -> str | None:
        """A full revision id for `revision` (an id, a unique prefix, head or base)."""
        if revision == "base":
            return None
        if revision in ("head", "heads"):
            return self.single_head()
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        try:
            script = self.script.get_revision(revision)
        except (CommandError, RevisionError) as exc:
            raise ConfigError(f"revision '{revision}' is unknown ({exc}): `invoke history` "
                              "lists the revisions") from None
        if script is None:
            raise ConfigError(f"revision '{revision}' is unknown: `invoke history` lists them")
        return script.revision

    def is_known(self, revision: str | None) -> bool:
        """Whether the scripts have `revision` (base always is)."""
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        if revision is None:
            return True
        try:
            return self.script.get_revision(revision) is not None
        except (CommandError, RevisionError):
            return False

    def check_known(self, current: str | None) -> None:
        """Refuse to plan from a database revision the code does not have (its file removed,
        or not pulled yet): Alembic cannot tell what lies between it and anything else."""
        if not self.is_known(current):
            raise UnknownRevision(unknown_revision_advice(current, self.settings.env))

    def pending(self, current: str | None, target: str | None) -> list[Revision]:
        """Revisions an upgrade from `current` to `target` applies, in apply order."""
        self.check_known(current)
        if target is None or target == current:
            return []
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        try:
            scripts = list(self.script.iterate_revisions(target, current or "base"))
        except (CommandError, RevisionError):
            raise ConfigError(f"revision {target} is not ahead of the database's revision "
                              f"{current}: use `invoke rollback --to {target}` to go back") from None
        return [Revision.of(s) for s in reversed(scripts)]

    def downgrade_target(self, current: str | None, to: str) -> tuple[str | None, list[Revision]]:
        """Resolve rollback's `--to` (-N, a revision id or base) against `current`; return the
        target and the revisions undone, in the order they are undone."""
        steps: list[Revision] = []
        self.check_known(current)
        match = RELATIVE_RE.match(to)
        if match:
            wanted = int(match.group(1))
            if wanted < 1:
                raise ConfigError(f"--to {to} goes nowhere: use -1 or more, a revision or base")
            cursor = current
            while len(steps) < wanted and cursor is not None:
                script = self.script.get_revision(cursor)
                if isinstance(script.down_revision, (tuple, list)):
                    raise ConfigError(f"revision {cursor} is a merge point: roll back to an "
                                      "explicit revision id instead of a relative step")
                steps.append(Revision.of(script))
                cursor = script.down_revision
            if len(steps) < wanted:
                raise ConfigError(f"--to {to} goes below base: the database is only "
                                  f"{len(steps)} revision(s) above base")
            return cursor, steps
        target = self.resolve(to)
        if target == current:
            return target, []
        undone = self.pending(target, current) if current else None
        if undone is None:
            raise ConfigError(f"the database is at base: there is nothing to roll back to {to}")
        # pending() names what an upgrade target..current applies; a rollback undoes it backwards.
        return target, list(reversed(undone))

    # -- changing state --------------------------------------------------------------------
    def upgrade(self, target: str | None) -> None:
        from alembic import command
        self._run(command.upgrade, target or "head", "upgrade")

    def downgrade(self, target: str | None) -> None:
        from alembic import command
        self._run(command.downgrade, target or "base", "downgrade")

    def upgrade_sql(self, current: str | None, target: str) -> str:
        """Offline mode over exactly current..target: Alembic alone cannot know `current`."""
        import io

        from alembic import command

        buffer = io.StringIO()
        self.config.output_buffer = buffer
        try:
            command.upgrade(self.config, f"{current}:{target}" if current else target, sql=True)
        finally:
            self.config.output_buffer = None
        return buffer.getvalue()

    def stamp(self, revision: str) -> None:
        import functools

        from alembic import command
        target = self.resolve(revision)
        # From a revision the scripts do not have, Alembic cannot work out a path to `target`:
        # the version table is emptied first and `target` recorded alone (the documented fix
        # for a database at an unknown revision).
        purge = not self.is_known(self._position())
        self._run(functools.partial(command.stamp, purge=purge), target or "base", "stamp")

    def _run(self, fn, target: str, verb: str) -> None:
        """`fn` (an alembic command) to `target`. A lock timeout rolls the attempt back (one
        transaction); it is tried again after a pause, as LockRetries says."""
        from sqlalchemy.exc import OperationalError

        retries = self.lock_retries
        before = self._position()
        for attempt in range(1, retries.attempts + 1):
            try:
                return self._attempt(fn, target, verb)
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
                    raise self._failed(exc, target, verb) from exc
                waited = (f"the {verb} waited longer than MIGRATION_LOCK_TIMEOUT "
                          f"({self.config.attributes['postgres_timeouts'].get('lock_timeout')}) "
                          "for a lock")
                statement = _statement(exc)
                # A revision that committed on its own (an autocommit block) moved the
                # database: going on from there would be another plan than the one shown.
                now = self._position()
                if attempt == retries.attempts or now != before:
                    tries = "1 attempt" if attempt == 1 else f"each of {attempt} attempts"
                    changed = ("nothing was changed" if now == before else
                               f"the database is now at {now or 'base'}")
                    raise MigrationFailed(
                        f"{waited} on {tries}, running: {statement}; another session holds a "
                        f"lock on that table (see pg_locks / pg_stat_activity): {changed}, "
                        "retry when it is quiet") from exc
                pause = retries.pause(attempt)
                self.reporter.warn(f"{waited} (attempt {attempt} of {retries.attempts}), "
                                   f"running: {statement}; rolled back, nothing changed; "
                                   f"retrying in {pause:g} s")
                time.sleep(pause)

    def _position(self) -> str | None:
        try:
            return self.current()
        except ConfigError:  # stamped with several revisions: `invoke stamp` repairs that
            return None

    def _attempt(self, fn, target: str, verb: str) -> None:
        from alembic.util import CommandError
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            with self._interruptible():
                fn(self.config, target)
        except OpsError:
            raise  # ours, from a hook in alembic/env.py (a lost lock): already one sentence
        except CommandError as exc:
            raise MigrationFailed(f"alembic {verb} to {target} failed: {exc}") from exc
        except OperationalError:
            raise  # _run decides: a lock timeout is tried again
        except DBAPIError as exc:
            # The server's first line and the statement: SQLAlchemy's text runs on for lines
            # (parameters, a link), and what follows it must stay on the message's one line.
            raise MigrationFailed(f"alembic {verb} to {target} failed: {first_line(exc.orig)}, "
                                  f"running: {_statement(exc)}") from exc
        except Exception as exc:
            raise MigrationFailed(f"alembic {verb} to {target} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc

    def _interruptible(self):
        """A stop (SIGTERM, Ctrl-C) cancels the statement the server is running, instead of
        waiting until it ends (app/ops/interruptible.py)."""
        if self.database.kind != "postgresql":
            return contextlib.nullcontext()
        return cancellable_statements()

    def _failed(self, exc, target: str, verb: str) -> MigrationFailed:
        if getattr(exc.orig, "pgcode", None) == QUERY_CANCELED:
            return MigrationFailed(self._canceled(exc, verb))
        return MigrationFailed(f"alembic {verb} to {target} failed: "
                               f"{str(exc.orig).strip().splitlines()[0]}")

    def _canceled(self, exc, verb: str) -> str:
        """Why the server canceled the statement, naming the setting that applied: ours when
        set, else the one the role, the database or the server gave the session."""
        running = f"running: {_statement(exc)}"
        primary = getattr(getattr(exc.orig, "diag", None), "message_primary", None) or ""
        if "statement timeout" not in primary:
            return (f"the {verb}'s statement was canceled ({primary or 'a cancel request'}: "
                    f"pg_cancel_backend from another session?), {running}")
        ours = self.config.attributes["postgres_timeouts"].get("statement_timeout")
        if ours:
            return f"the {verb} ran longer than MIGRATION_STATEMENT_TIMEOUT ({ours}), {running}"

        applied = applied_setting(self.database.url, "statement_timeout") or "statement_timeout"
        return (f"the {verb} ran longer than {applied}, {running}; MIGRATION_STATEMENT_TIMEOUT "
                "(not set) would give the migrations a timeout of their own")

    def history(self) -> str:
        """Alembic's history, oldest at the bottom, as text for the caller to print."""
        from alembic import command
        current = self.current() if self.database.exists() else None
        # Alembic marks the current revision by resolving it: an unknown one would fail there.
        with self._printed() as out:
            command.history(self.config, verbose=False,
                            indicate_current=self.database.exists() and self.is_known(current))
        return out.getvalue()

    def show_heads(self) -> str:
        """Alembic's heads, verbose, as text for the caller to print."""
        from alembic import command
        with self._printed() as out:
            command.heads(self.config, verbose=True)
        return out.getvalue()

    @contextlib.contextmanager
    def _printed(self):
        """What an Alembic command prints (Config.print_stdout), caught as text instead. Alembic
        encodes it for its stream's encoding first: the buffer has the same one, so exactly the
        characters it would have printed get through."""
        import io

        class Buffer(io.StringIO):
            encoding = getattr(self.config.stdout, "encoding", None)

        stdout, self.config.stdout = self.config.stdout, Buffer()
        try:
            yield self.config.stdout
        finally:
            self.config.stdout = stdout

    def merge(self, message: str):
        from alembic import command
        heads = self.heads()
        if len(heads) < 2:
            raise ConfigError(f"there is nothing to merge: the migrations have one head "
                              f"({heads[0] if heads else 'none'})")
        return command.merge(self.config, "heads", message=message)
