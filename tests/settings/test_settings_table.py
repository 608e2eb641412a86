"""The table of settings (app/settings/table.py): declarations, parsers, the warning about a key
of a .env file that is no setting, and the documentation that must match the table.

Settings are built from a tmp_path root and an explicit `environ`, as in test_settings.py.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.ops.errors import ConfigError
from app.settings import TABLE, Settings, load_settings
from app.settings.doc import COMMAND, render
from app.settings.table import NAMES, undeclared
from helpers import write_dotenv

REPO = Path(__file__).resolve().parents[2]


def of(**environ: str) -> Settings:
    return Settings(env="dev", values=environ, root=Path("/project"))


# -- the declarations ------------------------------------------------------------------------
def test_every_setting_is_declared_once_with_a_kind_and_a_one_line_description():
    names = [s.name for s in TABLE]
    assert len(names) == len(set(names)) == len(NAMES)
    for setting in TABLE:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", setting.name), setting
        assert setting.kind in {"duration", "seconds", "bytes", "bool", "int", "number", "list",
                                "enum", "URL", "path", "string", "command", "window",
                                "timezone"}, setting
        assert setting.doc and "\n" not in setting.doc, setting
        assert getattr(Settings, setting.name) is setting  # read as settings.NAME


def test_the_secrets_are_marked():
    secret = {s.name for s in TABLE if s.secret}
    assert secret == {"DATABASE_URL", "POSTGRES_PASSWORD"}


def test_the_lock_timeout_default_is_written_once(tmp_path):
    for path in ("app/ops/schema/migrations.py", "app/ops/databases/postgres/database.py"):
        assert '"5s"' not in (REPO / path).read_text(), path
    assert Settings.MIGRATION_LOCK_TIMEOUT.default == "5s"
    assert of().MIGRATION_LOCK_TIMEOUT.text == "5s"


def test_no_setting_is_read_by_a_string_key():
    """Code reads settings.NAME; `.get("NAME")` on settings or their `.values` is gone. (The
    PostgreSQL lock check reads the *server's* settings, pg_settings, as a dict: not ours.)"""
    offenders = []
    for path in [REPO / "tasks.py", *sorted((REPO / "app").rglob("*.py"))]:
        if path.is_relative_to(REPO / "app" / "settings") or (
                "databases" in path.parts and path.name.endswith("locks.py")):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"settings\.(get\(|values\b|duration\(|seconds\(|target_seconds\()",
                         line) or re.search(r"\.get\(\s*['\"](%s)['\"]" % "|".join(NAMES), line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- parsers: typed values, defaults, the same errors, read lazily -----------------------------
def test_typed_values_and_defaults():
    s = of(BACKUP_KEEP_LAST="3", BACKUP_KEEP_DAYS="1.5", PRODUCTION="yes", POSTGRES_PORT="6543",
           BACKUP_ENCRYPTION_RECIPIENTS=" age1a , ,age1b", PGBACKREST_COMMAND="sudo -u 'pg x'",
           BACKUP_S3_SSE="aws:KMS", BACKUP_STORAGE="S3", WATCH_LATENCY_FACTOR="2.5")
    assert s.BACKUP_KEEP_LAST == 3 and s.BACKUP_KEEP_DAYS == 1.5
    assert s.PRODUCTION is True and s.USE_SQLITE is False
    assert s.POSTGRES_PORT == 6543 and of().POSTGRES_PORT == 5432
    assert s.BACKUP_ENCRYPTION_RECIPIENTS == ("age1a", "age1b")
    assert s.PGBACKREST_COMMAND == ["sudo", "-u", "pg x"] and of().PGBACKREST_COMMAND == ["pgbackrest"]
    assert s.BACKUP_S3_SSE == "aws:kms" and of().BACKUP_S3_SSE is None
    assert s.BACKUP_STORAGE == "s3" and of().BACKUP_STORAGE == "local"
    assert s.WATCH_LATENCY_FACTOR == 2.5 and of().WATCH_HEALTH_FAILURES == 3
    assert of().BACKUP_DIR == Path("/project/backups")
    assert of(BACKUP_DIR="/abs").BACKUP_DIR == Path("/abs")
    assert of().SQLITE_PATH == Path("/project/dev.db")
    assert of().PGBACKREST_TIMEOUT == 60 and of(PGBACKREST_TIMEOUT="90s").PGBACKREST_TIMEOUT == 90
    assert of().BACKUP_KEEP_LAST is None and of().MAINTENANCE_TIMEZONE == "UTC"


def test_an_empty_value_means_unset():
    assert of(BACKUP_KEEP_LAST="", MIGRATION_LOCK_TIMEOUT="").BACKUP_KEEP_LAST is None
    assert of(MIGRATION_LOCK_TIMEOUT="").MIGRATION_LOCK_TIMEOUT.text == "5s"


def test_a_default_that_depends_on_the_env():
    assert Settings(env="prod", values={}).BACKUP_ENCRYPTION == "required"
    assert Settings(env="dev", values={}).BACKUP_ENCRYPTION == "optional"
    assert Settings(env="qa", values={}, root=Path("/p")).SQLITE_PATH == Path("/p/qa.db")


@pytest.mark.parametrize("name, value", [
    ("MIGRATION_LOCK_TIMEOUT", " 2 min "), ("CHECK_BACKUP_MAX_AGE", "90m"),
    ("WATCH_LATENCY_MIN", "10ms"), ("BACKUP_S3_OBJECT_LOCK", "35d"), ("RPO_TARGET", "2d"),
])
def test_durations_are_seconds_with_their_text(name, value):
    seconds = {"MIGRATION_LOCK_TIMEOUT": 120, "CHECK_BACKUP_MAX_AGE": 5400,
               "WATCH_LATENCY_MIN": 0.01, "BACKUP_S3_OBJECT_LOCK": 35 * 86400,
               "RPO_TARGET": 2 * 86400}[name]
    parsed = getattr(of(**{name: value}), name)
    assert parsed == pytest.approx(seconds)
    assert parsed.text == (value.replace(" ", "") if name.startswith("MIGRATION") else value)


@pytest.mark.parametrize("name, value, message", [
    ("MIGRATION_LOCK_TIMEOUT", "2d", "MIGRATION_LOCK_TIMEOUT '2d' is not a duration: use e.g. "
                                     "5s, 500ms or 2min"),
    ("CHECK_BACKUP_MAX_AGE", "0h", "CHECK_BACKUP_MAX_AGE '0h' is not a duration: use e.g. 26h, "
                                   "90min, 2d or 3600s"),
    ("RPO_TARGET", "soon", "RPO_TARGET 'soon' is not a duration: use e.g. 24h, 90min, 30d or "
                           "3600s"),
    ("WATCH_INTERVAL", "0", "WATCH_INTERVAL '0' is not a duration: use e.g. 30s, 10m or 1h"),
    ("WATCH_AFTER_MIGRATE", "x", "WATCH_AFTER_MIGRATE 'x' is not a duration: use e.g. 30s, 10m "
                                 "or 1h (0: no watch)"),
    ("BACKUP_S3_OBJECT_LOCK", "35 days", "BACKUP_S3_OBJECT_LOCK '35 days' is not a duration: "
                                         "use e.g. 35d, 12h or 90s"),
    ("BACKUP_KEEP_LAST", "0", "BACKUP_KEEP_LAST '0' is not a valid count: use a positive number"),
    ("BACKUP_KEEP_DAYS", "nan", "BACKUP_KEEP_DAYS 'nan' is not a valid count: use a positive "
                                "number of days up to 36500"),
    ("PGBACKREST_TIMEOUT", "-1", "PGBACKREST_TIMEOUT '-1' is not a number of seconds: use e.g. 60"),
    ("PGBACKREST_MAX_READY", "many", "PGBACKREST_MAX_READY 'many' is not a number of WAL "
                                     "segments: use e.g. 32"),
    ("MIGRATION_LOCK_RETRIES", " 101 ", "MIGRATION_LOCK_RETRIES '101' is not a number of "
                                        "retries: use 0 (no retry) up to 100, e.g. 3"),
    ("WATCH_HEALTH_FAILURES", "0", "WATCH_HEALTH_FAILURES '0' is not a whole number of at least 1"),
    ("WATCH_LATENCY_FACTOR", "0.5", "WATCH_LATENCY_FACTOR '0.5' is not a number of at least 1"),
    ("WATCH_HEALTH_URL", "ftp://x", "WATCH_HEALTH_URL 'ftp://x' is not an http:// or https:// "
                                    "URL"),
    ("BACKUP_STORAGE", "FTP", "BACKUP_STORAGE 'ftp' is not supported: use local or s3"),
    ("BACKUP_METHOD", "Tar", "BACKUP_METHOD 'tar' is not supported: use dump or pgbackrest"),
    ("BACKUP_ENCRYPTION", "Maybe ", "BACKUP_ENCRYPTION 'Maybe ' is not supported: use required "
                                    "or optional"),
    ("BACKUP_S3_SSE", "kms", "BACKUP_S3_SSE 'kms' is not supported: use AES256 or aws:kms"),
    ("POSTGRES_PORT", "54x2", "POSTGRES_PORT '54x2' is not a port number"),
    ("PG_STOP_COMMAND", "stop 'now", "PG_STOP_COMMAND cannot be split into words"),
    ("DATABASE_URL", "not a url", "DATABASE_URL for env 'dev' is not a valid SQLAlchemy URL"),
])
def test_a_bad_value_is_the_config_error_it_always_was_and_only_when_read(name, value, message):
    settings = of(**{name: value})  # building the settings reads nothing
    for _ in range(2):  # not cached as good on the second read either
        with pytest.raises(ConfigError) as caught:
            getattr(settings, name)
        assert str(caught.value).startswith(message), str(caught.value)
    assert of(**{name: value}).BACKUP_DIR == Path("/project/backups")  # others still read


def test_a_value_is_parsed_once():
    settings = of(RPO_TARGET="2d")
    assert settings.RPO_TARGET is settings.RPO_TARGET


# -- keys of a .env file that are no setting ---------------------------------------------------
def test_a_typo_names_the_closest_setting():
    assert undeclared("BACKUP_KEEP_LAS") == ("BACKUP_KEEP_LAS: not a setting; did you mean "
                                             "BACKUP_KEEP_LAST?")
    assert undeclared("MAINTENANCE_WINDOWS") == ("MAINTENANCE_WINDOWS: not a setting; did you "
                                                 "mean MAINTENANCE_WINDOW?")
    assert undeclared("FLUX_CAPACITOR") == "FLUX_CAPACITOR: not a setting"
    assert undeclared("BACKUP_KEEP_LAST") is None


@pytest.mark.parametrize("key", ["AWS_PROFILE", "AWS_REGION", "PGSSLMODE", "PGPASSWORD"])
def test_the_libraries_variables_are_no_typo(key):
    assert undeclared(key) is None


@pytest.mark.parametrize("key, closest", [("PGBACKREST_STANZ", "PGBACKREST_STANZA"),
                                          ("PG_BIN", "PG_BIN_DIR")])
def test_our_own_pg_prefixes_are_checked(key, closest):
    assert undeclared(key) == f"{key}: not a setting; did you mean {closest}?"


def test_load_settings_names_each_unknown_key_of_the_env_files_once(tmp_path):
    write_dotenv(tmp_path / ".env", BACKUP_KEEP_LAS="3", AWS_PROFILE="ops")
    write_dotenv(tmp_path / ".env.staging", USE_SQLITE="True", BACKUP_KEEP_LAS="4",
                 WHATEVER_ELSE="1")
    settings = load_settings("staging", environ={"NOT_OURS": "1", "BACKUP_KEPP_DAYS": "2"},
                             root=tmp_path)
    assert settings.unknown_keys == [
        "BACKUP_KEEP_LAS: not a setting; did you mean BACKUP_KEEP_LAST? (in .env, .env.staging)",
        "WHATEVER_ELSE: not a setting (in .env.staging)"]  # the process environment: not checked
    assert load_settings("staging", environ={}, root=tmp_path).BACKUP_KEEP_LAST is None


def test_an_env_without_files_has_no_unknown_keys(tmp_path):
    assert load_settings("dev", environ={"ANYTHING": "1"}, root=tmp_path).unknown_keys == []


def test_library_variables_are_passed_on_and_ours_are_not():
    settings = of(AWS_PROFILE="ops", BACKUP_S3_BUCKET="b")
    assert settings.library("AWS_PROFILE") == "ops"
    assert settings.library("AWS_DEFAULT_REGION") is None
    with pytest.raises(ValueError, match="settings.BACKUP_S3_BUCKET"):
        settings.library("BACKUP_S3_BUCKET")


# -- the documentation matches the table -----------------------------------------------------
def documented(text: str, pattern: str) -> list[str]:
    return re.findall(pattern, text, flags=re.MULTILINE)


def test_env_example_shows_every_setting_and_nothing_else():
    shown = documented((REPO / ".env.example").read_text(), r"^#?\s*([A-Z][A-Z0-9_]*)=")
    assert len(shown) == len(set(shown)), "a setting shown twice in .env.example"
    assert sorted(NAMES - set(shown)) == [], "declared but not in .env.example"
    assert sorted(set(shown) - NAMES) == [], "in .env.example but not declared"


def test_docs_settings_md_lists_every_setting_and_nothing_else():
    listed = documented((REPO / "docs" / "settings.md").read_text(), r"^\| `([A-Z0-9_]+)` \|")
    assert sorted(listed) == sorted(NAMES)


def test_docs_settings_md_is_generated_from_the_table():
    current = (REPO / "docs" / "settings.md").read_text()
    assert current == render(), f"docs/settings.md is out of date: run `{COMMAND}`"


def test_the_generator_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.settings.doc"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out == render()


def test_loading_settings_imports_nothing_heavy():
    code = ("import sys; from app.settings import load_settings; s = load_settings('dev', "
            "environ={}); s.BACKUP_DIR; s.RPO_TARGET; s.unknown_keys; "
            "print(sorted(m for m in ('boto3', 'rich', 'zstandard', 'pyrage', 'sqlalchemy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
