"""Release-safety tasks for the Medical Image Diagnostics API's database.

Each task parses its options, makes one call into `app`, and prints the result. Errors from the
`app.ops.errors` family become one line and the contract's exit code, here and nowhere else.
Only invoke is imported at module level so that `invoke --list` stays fast; each task imports
what it needs.
"""
import contextlib
import functools
from datetime import datetime, timezone

from invoke import Collection, Exit
from invoke import task as invoke_task

ENV_HELP = "environment to act on (default: APP_ENV, else dev); settings come from .env.ENV"


def task(*args, **kwargs):
    """invoke's @task, with `--env` help added, empty values refused, SIGTERM and SIGHUP handled
    like Ctrl-C, and OpsError turned into a message and exit code."""
    def wrap(body):
        @functools.wraps(body)
        def run(c, *a, **kw):
            from app.ops.errors import OpsError
            from app.ops.signals import Stopped, stop_on_signals
            try:
                _refuse_empty(kw, kwargs.get("positional", ()))
                with stop_on_signals():
                    return body(c, *a, **kw)
            except OpsError as exc:
                from app.ops.printable import printable  # a message may quote the store
                raise Exit(f"ERROR: {printable(exc)}", code=int(exc.exit_code)) from None
            except KeyboardInterrupt as exc:
                # Every child was stopped and every partial file removed on the way out.
                what = exc.name if isinstance(exc, Stopped) else "interrupted"
                raise Exit(f"ERROR: {what}; nothing further was done",
                           code=exc.exit_code if isinstance(exc, Stopped) else 130) from None
            except BrokenPipeError:
                # The reader went away (`invoke backups | head`): stop quietly, as cat would.
                import os
                import sys
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=141) from None
        kwargs.setdefault("help", {}).setdefault("env", ENV_HELP)
        return invoke_task(**kwargs)(run)
    return wrap(args[0]) if args and callable(args[0]) else wrap


def _refuse_empty(options: dict, positional) -> None:
    """`--backup=""` must not mean "the newest", nor `--env=""` the default env."""
    from app.ops.errors import ConfigError
    for name, value in options.items():
        if isinstance(value, str) and not value.strip():
            what = name.upper() if name in positional else f"--{name.strip('_').replace('_', '-')}"
            raise ConfigError(f"{what} was given an empty value: give it a value"
                              + ("" if name in positional else ", or leave the option out"))


def _now() -> datetime:
    # The one place that reads the clock; library code takes `now` as an argument.
    return datetime.now(timezone.utc)


def _settings(env, warn=True):
    """The env's settings; a key of its .env files that is no setting is a warning, once per
    task (`invoke check` reports it as a check instead)."""
    from app.settings import load_settings
    settings = load_settings(env)
    for problem in settings.unknown_keys if warn else ():
        _console().warn(problem)
    return settings


def _target(env, warn=True):
    """The env's settings, database and backup store: opened once per task, passed down."""
    from app.ops.target import open_target
    return open_target(_settings(env, warn))


def _console():
    from app.console import Console
    return Console()


@task(help={"json": "print the contract's JSON object instead of a table"})
def status(c, env=None, json=False):
    """Show the database, its revision, pending migrations, newest backup and window."""
    from app.ops.commands.status import collect_status
    from app.ops.units import human_age, human_size

    console = _console()
    now = _now()
    target = _target(env)
    info = collect_status(target, now, console.warn)
    if json:
        return console.json(info)
    last = info["last_backup"]
    window = info["window"]
    # Shown only when there are some: S3 uploads that a failed run could not abort.
    unaborted = [("unaborted upload", f"{u['location']} (upload id {u['upload_id']}, "
                  f"{u['parts']} part{'' if u['parts'] == 1 else 's'} stored, recorded {u['recorded_at']} in {u['record']}): the next "
                  f"run that reaches {u['endpoint']} aborts it")
                 for u in info["unaborted_uploads"]]
    # Shown only when there are some: restores a kill or a server restart cut short.
    unaborted += [("interrupted restore", f"{r['describe']}: the next migrate, rollback, "
                   "backup or restore of this env finishes it")
                  for r in info["interrupted_restores"]]
    console.fields(f"Environment {info['env']}" + (" (PRODUCTION)" if info["production"] else ""), [
        ("database", info["database"]),
        ("current", info["current"] or "base (no revision yet)"),
        ("heads", ", ".join(info["heads"]) or "-"),
        ("pending", "unknown: " + info["revision_problem"] if info["revision_problem"] else
         ", ".join(info["pending"]) or "none"),
        ("last backup", "none" if last is None else
         f"{last['id']}, {human_age(last['created_at'], now)}, {human_size(last['size'])}, "
         f"{'verified' if last['verified'] else 'NOT VERIFIED'}, {last['location']}"
         + ("" if last["artifact"] == "present" else f", ARTIFACT {last['artifact'].upper()}")),
        *target.method.status_lines(info),
        *([("retention", f"S3 Object Lock, {info['retention']['object_lock']} per object "
            f"({info['retention']['mode']} mode)")] if info.get("retention") else []),
        ("production", "yes" if info["production"] else "no"),
        *([("last watch", _watch_status(info["last_watch"]))] if info.get("last_watch")
          else []),
        ("window", "not configured" if window is None else
         f"open until {window['closes_at']}" if window["open"] else
         f"closed, next opening {window['next_open'] or 'none configured'}"),
        *unaborted,
        *[("dated in future", _future_line(item)) for item in info.get("future_backups", ())],
    ])


def _future_line(item: dict) -> str:
    return (f"{item['id']}, created_at {item['created_at']}: the clock of the host that took it "
            "was wrong (or its manifest was edited); it does not count as the newest backup")
def _watch_status(last: dict) -> str:
    regressed = [s["name"] for s in last.get("signals") or () if s.get("state") == "regression"]
    return (f"{last.get('verdict')} at {last.get('at')}, {last.get('watched_seconds')} s watched"
            + (f" ({', '.join(regressed)})" if regressed else ""))


@task(help={"revision": "target revision (default: head)",
            "sql": "print the SQL of the pending migrations and change nothing",
            "break_glass": "run in production outside the window; REASON goes to the audit log",
            "watch": "after the change, watch the database and the application for DURATION "
                     "(e.g. 10m; default WATCH_AFTER_MIGRATE; 0: no watch); exit 6 on a "
                     "regression"})
def migrate(c, env=None, revision="head", sql=False, break_glass=None, watch=None):
    """Back up, then upgrade the database to head (or --revision)."""
    from app.ops.commands import release

    console = _console()
    target = _target(env)
    if sql:
        return console.say(release.upgrade_sql(target, revision))
    watched = _watched(console, target, watch, "migrate")
    console.info(f"env {target.env}: {target.database.masked_url}")
    console.show_migration_log()
    result = release.migrate(target, revision=revision, now=_now(), reporter=console,
                             break_glass=break_glass,
                             before_backup=watched.take_baseline if watched else None)
    _report_run(console, result)
    if watched and not result.nothing_to_do:
        watched.watch_after(result)


@task(help={"to": "where to go: -N steps (default -1), a revision id, or base",
            "break_glass": "run in production outside the window; REASON goes to the audit log",
            "yes": "in production, go on although the rollback drops tables or columns",
            "watch": "after the change, watch the database and the application for DURATION "
                     "(e.g. 10m; default WATCH_AFTER_MIGRATE; 0: no watch); exit 6 on a "
                     "regression"})
def rollback(c, env=None, to="-1", break_glass=None, yes=False, watch=None):
    """Back up, then downgrade the database (one step by default)."""
    from app.ops.commands import release

    console = _console()
    target = _target(env)
    watched = _watched(console, target, watch, "rollback")
    console.info(f"env {target.env}: {target.database.masked_url}")
    console.show_migration_log()
    result = release.rollback(target, to=to, now=_now(), reporter=console,
                              break_glass=break_glass, yes=yes, ask=_terminal_prompt(),
                              before_backup=watched.take_baseline if watched else None)
    _report_run(console, result)
    if watched and not result.nothing_to_do:
        watched.watch_after(result)


class _Watched:
    """A migrate or rollback that watches: its baseline before the backup, its watch after."""

    def __init__(self, console, target, config, seconds, action):
        self.console, self.target, self.config = console, target, config
        self.seconds, self.action, self.baseline = seconds, action, None

    def take_baseline(self, result) -> dict:
        import time

        from app.console_watch import WatchDisplay
        from app.ops.commands.watch.session import take_baseline

        with WatchDisplay(self.console).baseline(self.config.baseline) as progress:
            self.baseline = take_baseline(self.target, self.config, now=_now(),
                                          clock=time.monotonic, sleep=time.sleep,
                                          progress=progress, change={"action": self.action})
        return {"watch_baseline": self.baseline.name}

    def watch_after(self, result) -> None:
        from app.ops.methods.registry import method_of

        backup = result.backup
        change = {"action": result.action, "from_revision": result.before,
                  "to_revision": result.after, "backup_id": backup.id if backup else None,
                  "restore_point": bool(backup) and method_of(backup).restores_whole_cluster}
        _run_watch(self.console, self.target, self.config, self.baseline, self.seconds,
                   change=change)


def _watched(console, target, option, action):
    """A `_Watched` when this run watches (`--watch`, else WATCH_AFTER_MIGRATE), else None;
    without either the watch is not even imported. Bad WATCH_* settings stop the run here,
    before anything is done."""
    if option is None and target.settings.WATCH_AFTER_MIGRATE is None:
        return None
    from app.ops.commands.watch.config import WatchConfig
    from app.ops.commands.watch.session import check_watchable

    config = WatchConfig.from_settings(target.settings)
    seconds = config.watch_for(option)
    if not seconds:
        return None
    check_watchable(target, config)
    return _Watched(console, target, config, seconds, action)


def _run_watch(console, target, config, baseline, seconds, change=None, json=False):
    """Watch, show the verdict (or the JSON object), and exit 6 on a regression."""
    import time

    from app.console_watch import WatchDisplay
    from app.ops.errors import WatchRegression
    from app.ops.commands.watch.session import watch as run_watch

    display = WatchDisplay(console)
    live = contextlib.nullcontext(None) if json else display.live(seconds)
    with live as on_interval:
        outcome = run_watch(target, config, baseline, duration=seconds, now=_now(),
                            clock=time.monotonic, sleep=time.sleep, on_interval=on_interval,
                            change=change, reporter=console)
    if json:
        console.json(outcome.as_json())
    else:
        display.verdict(outcome)
    if outcome.verdict == "regression":
        undo = " or ".join(f"`{command}`" for command, _ in outcome.undo)
        raise WatchRegression(
            "the watch found a regression: " + "; ".join(s.detail for s in outcome.regressions)
            + (f"; undo with {undo}" if undo else "; undo the deploy that followed the baseline"))


def _terminal_prompt():
    """`input` when a person is at a terminal to answer, else None (confirmation refused)."""
    import sys
    return input if sys.stdin.isatty() and sys.stdout.isatty() else None


def _report_run(console, result):
    from app.ops.methods.registry import method_of

    if result.nothing_to_do:
        where = result.before or "base"
        verb = "migrate" if result.action == "migrate" else "roll back"
        return console.say(f"Nothing to {verb}: the database is at {where}. No backup taken.")
    if result.backup:
        console.say(method_of(result.backup).summary(result.backup, brief=True))
    console.say(f"{result.action.capitalize()} done: {result.before or 'base'} -> "
                f"{result.after or 'base'}")


@task(help={"label": "a note stored in the backup's manifest"})
def backup(c, env=None, label=None):
    """Take a verified backup now."""
    from app.ops.commands.backup_run import backup_on_demand
    from app.ops.methods.registry import method_of

    console = _console()
    manifest = backup_on_demand(_target(env), now=_now(), label=label, reporter=console)
    console.say(method_of(manifest).summary(manifest))


@task(help={"json": "print a JSON array, newest first"})
def backups(c, env=None, json=False):
    """List the environment's backups, newest first."""
    from app.ops.catalog.backups import list_backups
    from app.ops.catalog.dates import is_future
    from app.ops.commands.status import backup_item
    from app.ops.methods.registry import method_of
    from app.ops.units import human_age, human_size

    console = _console()
    items = list_backups(_target(env), console.warn)
    now = _now()
    if json:
        return console.json([backup_item(m, now) for m in items])
    if not items:
        return console.say("No backups yet.")
    console.table("Backups, newest first",
                  ["id", "age", "revision", "size", "verified", "reason", "encryption",
                   "location"],
                  [[m.id, f"IN THE FUTURE ({m.created_at})" if is_future(m, now) else
                    human_age(m.created_at, now), m.revision or "base", human_size(m.size),
                    ("yes" if m.verified else "NO") if m.intact else m.artifact_state.upper(),
                    m.label or m.reason, method_of(m).encryption_text(m), m.location]
                   for m in items])


@task(help={"backup": "the backup's id (default: the newest)",
            "restore_test": "restore into a scratch database, compare row counts, drop it"})
def verify(c, env=None, backup=None, restore_test=False):
    """Check a backup's checksum and that it reads back whole (or --restore-test it)."""
    from app.ops.catalog.backups import find_backup
    from app.ops.methods.registry import verify_backup

    console = _console()
    target = _target(env)
    manifest = find_backup(target, backup)
    if restore_test:
        from app.ops.commands.drills import restore_test as run_restore_test

        result = run_restore_test(target, manifest, now=_now())
        console.say(f"Restore test of backup {manifest.id} passed in {result.seconds:.1f} s: "
                    f"{len(result.counts)} tables, {sum(result.counts.values())} rows, all as "
                    "recorded. The scratch copy is dropped.")
        for done in result.checks:  # the checks that went on record (app/ops/catalog/drill_records.py)
            console.say(f"  {done['name']}: {done['detail']}")
        return
    with console.progress("verifying", total=manifest.size) as advance:
        verify_backup(target, manifest, now=_now(), progress=advance)
    console.say(f"Backup {manifest.id} is intact: sha256 {manifest.sha256} matches and "
                "the archive reads back whole.")


@task(positional=["message"],
      help={"message": "what the revision does, in three words or more",
            "empty": "write an empty revision to fill in by hand"})
def create(c, message, env=None, empty=False):
    """Autogenerate a revision from app/models/ and show it for review."""
    from app.ops.schema.revisions import create_revision

    console = _console()
    created = create_revision(_target(env), message, empty=empty)
    console.say(f"Created {created.path}")
    console.say(created.review)
    for warning in created.warnings:
        console.warn(warning)


@task
def history(c, env=None):
    """Show the revisions, oldest at the bottom, marking the database's current one."""
    from app.ops.schema.migrations import Migrations
    _say_text(Migrations(_target(env)).history())


def _say_text(text: str) -> None:
    """Alembic's own lines, as it would have printed them."""
    if text:
        _console().say(text.removesuffix("\n"))


@task
def heads(c, env=None):
    """Show the head revisions (more than one needs `invoke merge`)."""
    from app.ops.schema.migrations import Migrations
    _say_text(Migrations(_target(env)).show_heads())


@task(help={"message": "the merge revision's message"})
def merge(c, env=None, message="merge heads"):
    """Join several heads into one with a merge revision."""
    from app.ops.schema.migrations import Migrations
    script = Migrations(_target(env)).merge(message)
    _console().say(f"Created merge revision {script.revision} at {script.path}")


@task(positional=["rev"], help={
    "rev": "the revision to record (an id, head or base)",
    "break_glass": "run in production outside the window; REASON goes to the audit log"})
def stamp(c, rev, env=None, break_glass=None):
    """Record REV as the database's revision without running any migration."""
    from app.ops.commands import release

    console = _console()
    before, after = release.stamp(_target(env), revision=rev, now=_now(), reporter=console,
                                  break_glass=break_glass)
    console.say(f"Stamped: {before or 'base'} -> {after or 'base'} (no migration ran)")


@task(help={"backup": "the backup's id (default: the newest verified one whose artifact is "
                      "present, not a safety backup)",
            "yes": "do not ask for confirmation (needed without a terminal)",
            "disconnect": "PostgreSQL: let the application keep using the database while the "
                          "copy is built, and end its sessions only at the swap (without it, "
                          "other sessions refuse the restore)",
            "whole_cluster": "restoring a pgBackRest restore point rewinds every database of the "
                             "cluster: allow it when the cluster holds other databases"})
def restore(c, env=None, backup=None, yes=False, disconnect=False, whole_cluster=False):
    """Restore a backup over the database (verified first; a safety backup of what it replaces)."""
    from app.ops.commands import restore as restoring
    from app.ops.methods.registry import method_of
    from app.ops.units import human_age

    console = _console()
    target = _target(env)
    now = _now()
    plan = restoring.plan_restore(target, backup, now)
    for note in plan.passed_over:  # newer backups the default could not take, and why
        console.warn(note)
    b = plan.backup
    console.fields("Restore", [
        ("backup", f"{b.id}, taken {human_age(b.created_at, now)} ({b.created_at})"),
        ("revision", b.revision or "base"),
        *method_of(b).describe(b), ("reason", b.reason),
        ("replaces", f"{target.database.masked_url}, " + (
            "closed to connections by an interrupted restore (opened again first)"
            if plan.closed else f"now at {plan.current or 'base'}"))])
    restoring.confirm(plan, yes=yes, ask=_terminal_prompt())
    result = restoring.run_restore(target, plan, now=now, reporter=console,
                                   disconnect=disconnect, whole_cluster=whole_cluster)
    console.say(f"Restored backup {b.id} in {result.seconds:.1f} s: the database is at "
                f"{result.revision or 'base'}.")
    if result.downtime_seconds is not None:
        console.say(f"The restored database is in service: time to service "
                    f"{result.time_to_service_seconds:.3f} s, downtime "
                    f"{result.downtime_seconds:.3f} s (closed to clients only for the swap).")
    if result.safety:
        console.say(f"Safety backup {result.safety.id} holds what was there before; undo with: "
                    f"invoke restore --env={target.env} --backup={result.safety.id} --yes"
                    + (" --disconnect" if disconnect else ""))
    for note in result.notes:
        console.say(note[0].upper() + note[1:])
    if result.safety_skipped:
        console.say(result.safety_skipped[0].upper() + result.safety_skipped[1:] + ": keep it "
                    "until you are satisfied, it is the only copy of what was there before.")
    elif result.kept_database:
        console.say(f"The previous database is kept as {result.kept_database}: drop it with "
                    f"`dropdb {result.kept_database}` once you are satisfied.")
    if result.safety_error:
        from app.ops.errors import BackupFailed
        raise BackupFailed(result.safety_error)


@task
def rehearse(c, env=None):
    """Restore the newest backup into a scratch database and run the migrations down and up."""
    from app.ops.commands.drills import rehearse as run_rehearsal

    console = _console()
    target = _target(env)
    console.show_migration_log()
    rehearsal = run_rehearsal(target, now=_now(), reporter=console)
    console.table(f"Rehearsal on backup {rehearsal.backup_id} ({rehearsal.outcome})",
                  ["step", "revision", "seconds"],
                  [[s.action, s.revision or "base", f"{s.seconds:.2f}"] for s in rehearsal.steps])
    console.say("The scratch copy is dropped.")


@task(help={"dry_run": "list what would be deleted, delete nothing"})
def prune(c, env=None, dry_run=False):
    """Delete backups beyond BACKUP_KEEP_LAST / BACKUP_KEEP_DAYS (never the newest verified)."""
    from app.ops.commands.prune import apply_prune, confirm_protected, plan_prune
    from app.ops.units import human_size

    console = _console()
    target = _target(env)
    # A real prune first reads back the backup it must keep; a dry run only reads manifests.
    plan = (plan_prune if dry_run else confirm_protected)(target, _now(), console.warn)
    console.say(f"Retention: {plan.rules}.")
    for m in plan.damaged or ():
        console.warn(f"backup {m.id}'s artifact is {m.artifact_state}: kept for a person to look "
                     f"at, not counted as a copy ({m.location})")
    for m in plan.future or ():
        from app.ops.catalog.dates import future_note
        console.warn(f"{future_note(m)}; kept, not counted as a copy")
    for m, until in plan.retained or ():
        console.say(f"Keeping {m.id} ({m.created_at}): under S3 Object Lock retention until "
                    f"{until.isoformat(timespec='seconds')}; a prune after that deletes it.")
    if not plan.delete:
        return console.say(f"Nothing to prune: {len(plan.keep)} backup(s) kept.")
    verb = "Would delete" if dry_run else "Deleting"
    for m in plan.delete:
        console.say(f"{verb} {m.id} ({m.created_at}, {human_size(m.size)}, {m.reason})")
    if not dry_run:
        apply_prune(target, plan)
    console.say(f"{len(plan.delete)} {'would go' if dry_run else 'deleted'}, "
                f"{len(plan.keep)} kept.")


@task(help={"json": "print a JSON array, newest first, each event with its sha256 and the "
                    "previous event it names"})
def audit(c, env=None, json=False):
    """Show the audit trail of migrate, rollback, restore and break-glass, newest first."""
    from app.ops.catalog.audit import read_events

    console = _console()
    target = _target(env)
    if json:
        # Each event with its own SHA-256 and the predecessor it names (app/ops/catalog/audit_chain.py).
        from app.ops.catalog.audit_chain import events_with_hashes
        return console.json(events_with_hashes(target.storage, console.warn))
    events = read_events(target, console.warn)
    if not events:
        return console.say("No audited runs yet.")
    console.table("Audit trail, newest first",
                  ["when", "action", "outcome", "from", "to", "backup", "who", "break glass"],
                  [[e.get("at", "?"), e.get("action", "?"), e.get("outcome", "?"),
                    e.get("from_revision") or "base", e.get("to_revision") or "base",
                    e.get("backup_id") or "-", f"{e.get('user', '?')}@{e.get('host', '?')}",
                    e.get("break_glass") or ""] for e in events])


@task(help={"for_": "how long to watch (default: WATCH_AFTER_MIGRATE, else 10m)",
            "baseline": "record a new baseline of normal traffic (WATCH_BASELINE long) and exit",
            "json": "print the contract's JSON object instead of the table"})
def watch(c, env=None, for_=None, baseline=False, json=False):
    """Compare the database and the application with the last baseline (6: regression)."""
    import time

    from app.console_watch import WatchDisplay
    from app.ops.errors import ConfigError
    from app.ops.commands.watch import baseline as baselines
    from app.ops.commands.watch.config import WatchConfig
    from app.ops.commands.watch.session import check_watchable, take_baseline

    console = _console()
    target = _target(env)
    config = WatchConfig.from_settings(target.settings)
    if baseline and for_ is not None:
        raise ConfigError("--baseline records a baseline of WATCH_BASELINE and exits: leave "
                          "out --for")
    seconds = None if baseline else config.duration(for_)
    check_watchable(target, config)
    if baseline:
        with WatchDisplay(console).baseline(config.baseline) as progress:
            base = take_baseline(target, config, now=_now(), clock=time.monotonic,
                                 sleep=time.sleep, progress=progress)
        for note in base.notes + [f"{k} is not watched: {v}" for k, v in base.unreadable.items()]:
            console.warn(note)
        if json:
            return console.json(base.record())
        return console.say(f"Baseline {base.name} recorded: {base.seconds:.0f} s of traffic, "
                           f"{len(base.statements or [])} main statement(s), "
                           f"{len(base.seq_rows_per_s or {})} table(s). `invoke watch "
                           f"--env={target.env}` compares with it.")
    base = baselines.latest(target.storage)
    if base is None or base.engine != target.database.kind:
        raise ConfigError(f"no baseline is recorded for env '{target.env}': run `invoke watch "
                          f"--env={target.env} --baseline` before the deploy, or set "
                          "WATCH_AFTER_MIGRATE so that migrate records one")
    _run_watch(console, target, config, base, seconds, json=json)


@task(help={"backup": "re-key only this backup (default: every backup of the env)",
            "dry_run": "list what would be re-keyed, change nothing"})
def rekey(c, env=None, backup=None, dry_run=False):
    """Re-encrypt the env's backups to the current BACKUP_ENCRYPTION_RECIPIENTS."""
    from app.ops.errors import BackupFailed, ConfigError
    from app.ops.commands.rekey import RESTORE_POINT_NOTE, plan_rekey, run_rekey

    console = _console()
    target = _target(env)
    plan = plan_rekey(target, backup, console.warn)
    for m in plan.restore_points:
        console.say(f"Backup {m.id}: {RESTORE_POINT_NOTE}.")
    for m in plan.current:
        console.say(f"Backup {m.id}: already encrypted to the current recipients.")
    for name in plan.orphans:
        console.say(f"{'Would remove' if dry_run else 'Removing'} "
                    f"{target.storage.location(name)}, left by an interrupted rekey.")
    verb = "Would re-key" if dry_run else "Re-keying"
    for m in plan.todo:
        now_to = (f"age to {len(m.recipients or [])} other recipient(s)" if m.encryption == "age"
                  else "not encrypted")
        console.say(f"{verb} backup {m.id} ({now_to}).")
    if dry_run:
        return console.say(f"{len(plan.todo)} would be re-keyed; nothing was changed.")
    result = run_rekey(target, plan, now=_now(), reporter=console)
    console.say(f"{len(result.done)} re-keyed, {len(plan.current)} already current, "
                f"{len(plan.restore_points)} restore point(s) not re-keyed, "
                f"{len(result.failed)} failed.")
    if result.failed:
        errors = [exc for _, exc in result.failed]
        kind = ConfigError if all(isinstance(e, ConfigError) for e in errors) else BackupFailed
        raise kind(f"{len(errors)} backup(s) not re-keyed, left as they were: "
                   + "; ".join(f"{m.id}: {exc}" for m, exc in result.failed))


@task(help={"json": "print a JSON object (status, checks, facts) instead of plugin lines",
            "prometheus": "also write the metrics to FILE for node_exporter's textfile "
                          "collector (name it *.prom; written atomically)"})
def check(c, env=None, json=False, prometheus=None):
    """Health for cron and monitoring: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    # The monitoring-plugins convention, not the contract's exit codes: whatever happens, one
    # status line and a plugin state, never a traceback (a bug is UNKNOWN too).
    from app.ops.commands import health
    from app.settings import resolve_env_name

    console = _console()
    now = _now()
    name = resolve_env_name(env)
    try:
        report = health.run_check(_target(env, warn=False), now)
    except KeyboardInterrupt:
        report = health.unknown(name, "interrupted")
    except Exception as exc:
        from app.ops.errors import OpsError
        report = health.unknown(name, str(exc) if isinstance(exc, OpsError) else
                                f"unexpected error: {type(exc).__name__}: {exc}")
    if prometheus:
        try:
            health.write_textfile(report, prometheus)
        except Exception as exc:
            report = health.textfile_failed(report, prometheus, exc)
    if json:
        console.json(report.as_json())
    else:
        for line in report.lines():
            console.say(line)
    if report.state:
        raise Exit(code=int(report.state))


@task(help={"since": "the period's start: a duration back from now (default 90d) or a date "
                     "(2026-01-31); never before the env's first backup or audit event",
            "json": "print the report as a JSON object",
            "html": "also write the report to FILE as one self-contained page with charts"})
def report(c, env=None, since=None, json=False, html=None):
    """Evidence for an audit: backups and RPO, restore drills and RTO, changes, the trail."""
    from app.ops.commands.evidence import build_report

    console = _console()
    facts = build_report(_target(env), now=_now(), since=since, warn=console.warn)
    if html:
        from app.ops.commands.evidence_html import write_html
        written = write_html(facts, html)
        if not json:
            console.say(f"Report written to {written}")
    if json:
        return console.json(facts)
    _print_report(console, facts)


def _print_report(console, facts):
    from app.ops.commands.evidence_html import hours

    trail = facts["trail"]
    console.fields(f"Evidence for env {facts['env']}", [
        ("period", f"{facts['period']['from']} to {facts['period']['to']}"),
        *[(t["name"], f"{'met' if t['met'] else 'MISSED'}: {hours(t['achieved_seconds'])} "
                      f"(target {hours(t['target_seconds'])}); {t['evidence']}")
          for t in facts["targets"]],
        ("trail", f"{'intact' if trail['intact'] else 'NOT INTACT'}, {trail['events']} events"
                  f" ({trail['unchained']} from before the chain), newest seen "
                  f"{(trail['newest'] or {}).get('name', 'none')}"),
        *[(f"trail {p['kind']}", p["detail"]) for p in trail["problems"]]])
    console.table(f"Backups ({len(facts['backups'])})",
                  ["id", "taken", "encryption", "verified", "size", "reason"],
                  [[b["id"], b["created_at"], b["encryption"],
                    "yes" if b["verified"] else "NO", str(b["size"]), b["reason"]]
                   for b in facts["backups"]])
    console.table(f"Restore drills ({len(facts['drills'])})",
                  ["kind", "at", "backup", "time", "outcome"],
                  [[d["kind"], d["at"], d["backup"] or "-", hours(d["rto_seconds"]),
                    d["outcome"]] for d in facts["drills"]])
    console.table(f"Changes ({len(facts['changes'])})",
                  ["when", "action", "outcome", "from", "to", "who", "break glass"],
                  [[e.get("at", "?"), e.get("action", "?"), e.get("outcome", "?"),
                    e.get("from_revision") or "base", e.get("to_revision") or "base",
                    e.get("user", "?"), e.get("break_glass") or ""] for e in facts["changes"]])
    console.say(trail["note"] + ".")


ns = Collection(status, migrate, rollback, backup, backups, verify, create, history, heads,
                merge, stamp, restore, prune, rehearse, audit, check, report, watch, rekey)
