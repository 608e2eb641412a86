"""app.settings: layering, environment names, database selection, production, storage.

Every test builds Settings from a tmp_path root and an explicit `environ`, so nothing here reads
the developer's shell or the repository's own .env files.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import make_url

from app.ops.errors import ConfigError
from app.ops.commands.health import UNIT_SECONDS
from app.settings import POSTGRES_UNITS, load_settings, parse_duration
from helpers import write_dotenv

AWKWARD = "p@ss:w/o%rd#1 'q' \"dq\" with spaces / end"


def write_env(root: Path, name: str | None, **settings: str) -> Path:
    return write_dotenv(root / (f".env.{name}" if name else ".env"), **settings)


PG = {"POSTGRES_SERVER": "db.example.internal", "POSTGRES_PORT": "6543",
      "POSTGRES_USER": "mida", "POSTGRES_PASSWORD": "secret", "POSTGRES_DB": "mida"}


# -- layering ----------------------------------------------------------------------------------
def test_layering_process_env_over_env_name_over_env(tmp_path):
    write_env(tmp_path, None, ONLY_BASE="base", BASE_AND_NAMED="base", ALL_THREE="base")
    write_env(tmp_path, "staging", BASE_AND_NAMED="named", ALL_THREE="named", ONLY_NAMED="named",
              USE_SQLITE="True")
    settings = load_settings("staging", environ={"ALL_THREE": "process"}, root=tmp_path)
    assert settings.env == "staging"
    assert settings.values["ONLY_BASE"] == "base"
    assert settings.values["BASE_AND_NAMED"] == "named"
    assert settings.values["ONLY_NAMED"] == "named"
    assert settings.values["ALL_THREE"] == "process"


def test_other_envs_files_do_not_leak(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True", MARKER="staging")
    write_env(tmp_path, "prod", MARKER="prod", DATABASE_URL="postgresql://u@prod/db")
    settings = load_settings("staging", environ={}, root=tmp_path)
    assert settings.values["MARKER"] == "staging"
    assert settings.DATABASE_URL is None
    assert settings.database_url.get_backend_name() == "sqlite"


def test_load_settings_does_not_write_into_os_environ(tmp_path):
    name = "MIDA_TEST_ONLY_IN_DOTENV_8c1f"
    assert name not in os.environ
    write_env(tmp_path, None, **{name: "x"})
    settings = load_settings("dev", environ={}, root=tmp_path)
    assert settings.values[name] == "x"
    assert name not in os.environ


def test_empty_value_means_unset(tmp_path):
    write_env(tmp_path, None, BACKUP_DIR="")
    settings = load_settings("dev", environ={"SQLITE_PATH": ""}, root=tmp_path)
    assert settings.backup_dir == tmp_path / "backups"
    assert Path(settings.database_url.database) == tmp_path / "dev.db"


# -- environment names -------------------------------------------------------------------------
def test_default_env_is_app_env_else_dev(tmp_path):
    assert load_settings(None, environ={}, root=tmp_path).env == "dev"
    settings = load_settings(None, environ={"APP_ENV": "ci", "USE_SQLITE": "1"}, root=tmp_path)
    assert settings.env == "ci"


def test_unknown_env_is_an_error_listing_known_envs(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True")
    write_env(tmp_path, "prod", **PG)
    write_env(tmp_path, "example", DATABASE_URL="sqlite:///example.db")
    with pytest.raises(ConfigError) as caught:
        load_settings("stagign", environ={"APP_ENV": "qa"}, root=tmp_path)
    message = str(caught.value)
    assert "stagign" in message
    for known in ("dev", "prod", "staging", "qa"):
        assert known in message
    assert "example" not in message


def test_unknown_env_never_falls_back_to_dev(tmp_path):
    # Even with a database configured in .env, a typo is refused, not pointed at it.
    write_env(tmp_path, None, DATABASE_URL="sqlite:///shared.db")
    with pytest.raises(ConfigError, match="prdo"):
        load_settings("prdo", environ={}, root=tmp_path)


def test_app_env_makes_an_env_known(tmp_path):
    environ = {"APP_ENV": "ci", "DATABASE_URL": "sqlite:////tmp/ci.db"}
    settings = load_settings("ci", environ=environ, root=tmp_path)
    assert settings.env == "ci"
    assert settings.database_url.database == "/tmp/ci.db"
    # APP_ENV names only itself: another unconfigured name is still unknown.
    with pytest.raises(ConfigError):
        load_settings("cj", environ=environ, root=tmp_path)


def test_env_file_makes_an_env_known(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True")
    assert load_settings("staging", environ={}, root=tmp_path).env == "staging"


# -- database selection ------------------------------------------------------------------------
def test_dev_default_is_sqlite_in_root(tmp_path):
    url = load_settings("dev", environ={}, root=tmp_path).database_url
    assert url.get_backend_name() == "sqlite"
    assert Path(url.database) == tmp_path / "dev.db"


def test_non_dev_env_without_database_settings_is_config_error(tmp_path):
    write_env(tmp_path, "staging", SOMETHING="else")
    settings = load_settings("staging", environ={}, root=tmp_path)
    with pytest.raises(ConfigError, match="staging"):
        settings.database_url


def test_database_url_takes_precedence(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True", SQLITE_PATH="other.db", **PG)
    url = load_settings("staging", environ={"DATABASE_URL": "postgresql://app@urlhost:5433/urldb"},
                        root=tmp_path).database_url
    assert (url.host, url.port, url.database, url.username) == ("urlhost", 5433, "urldb", "app")


def test_database_url_in_a_file_beats_postgres_settings_in_process_env(tmp_path):
    write_env(tmp_path, "staging", DATABASE_URL="sqlite:///from_file.db")
    url = load_settings("staging", environ=dict(PG), root=tmp_path).database_url
    assert url.get_backend_name() == "sqlite"
    assert url.database == "from_file.db"


def test_invalid_database_url_is_config_error(tmp_path):
    settings = load_settings("dev", environ={"DATABASE_URL": "not a url"}, root=tmp_path)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        settings.database_url


def test_use_sqlite_beats_postgres_and_path_is_relative_to_root(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True", SQLITE_PATH="data/staging.sqlite3", **PG)
    url = load_settings("staging", environ={}, root=tmp_path).database_url
    assert url.get_backend_name() == "sqlite"
    assert Path(url.database) == tmp_path / "data" / "staging.sqlite3"


def test_use_sqlite_default_path_is_named_after_env(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="true")
    url = load_settings("staging", environ={}, root=tmp_path).database_url
    assert Path(url.database) == tmp_path / "staging.db"


def test_absolute_sqlite_path_is_kept(tmp_path):
    target = tmp_path / "elsewhere" / "x.db"
    url = load_settings("dev", environ={"USE_SQLITE": "True", "SQLITE_PATH": str(target)},
                        root=tmp_path / "root").database_url
    assert Path(url.database) == target


def test_use_sqlite_false_falls_through_to_postgres(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="False", **PG)
    url = load_settings("staging", environ={}, root=tmp_path).database_url
    assert url.get_backend_name() == "postgresql"


def test_postgres_settings_build_the_url(tmp_path):
    write_env(tmp_path, "staging", **PG)
    url = load_settings("staging", environ={}, root=tmp_path).database_url
    assert url.get_backend_name() == "postgresql"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "db.example.internal", 6543, "mida", "secret", "mida")


def test_postgres_port_defaults_to_5432(tmp_path):
    pg = {k: v for k, v in PG.items() if k != "POSTGRES_PORT"}
    url = load_settings("staging", environ={"APP_ENV": "staging", **pg}, root=tmp_path).database_url
    assert url.port == 5432


@pytest.mark.parametrize("port", ["54x2", "-1", "5432.0", " 5432x"])
def test_bad_postgres_port_is_config_error(tmp_path, port):
    environ = {"APP_ENV": "staging", **PG, "POSTGRES_PORT": port}
    settings = load_settings("staging", environ=environ, root=tmp_path)
    with pytest.raises(ConfigError, match="POSTGRES_PORT"):
        settings.database_url


def assert_password_round_trips(settings, password):
    url = settings.database_url
    assert url.password == password
    rendered = url.render_as_string(hide_password=False)
    assert make_url(rendered).password == password
    masked = settings.masked_database_url
    for form in (password, quote(password, safe=""), quote_plus(password)):
        assert form not in masked
    assert "***" in masked
    assert "db.example.internal" in masked


def test_awkward_password_from_process_env_round_trips(tmp_path):
    environ = {"APP_ENV": "staging", **PG, "POSTGRES_PASSWORD": AWKWARD}
    assert_password_round_trips(load_settings("staging", environ=environ, root=tmp_path), AWKWARD)


def test_awkward_password_from_env_file_round_trips(tmp_path):
    write_env(tmp_path, "staging", **{**PG, "POSTGRES_PASSWORD": AWKWARD})
    settings = load_settings("staging", environ={}, root=tmp_path)
    assert settings.POSTGRES_PASSWORD == AWKWARD
    assert_password_round_trips(settings, AWKWARD)


@pytest.mark.parametrize("password", ["@", ":", "/", "%", "#", "'", '"', " ", "%40", "a b:c@d/e"])
def test_each_awkward_character_round_trips(tmp_path, password):
    environ = {"APP_ENV": "staging", **PG, "POSTGRES_PASSWORD": password}
    settings = load_settings("staging", environ=environ, root=tmp_path)
    url = settings.database_url
    assert url.password == password
    assert make_url(url.render_as_string(hide_password=False)).password == password
    assert make_url(url.render_as_string(hide_password=False)).host == "db.example.internal"


def test_masked_url_hides_password_given_in_database_url(tmp_path):
    url = "postgresql://mida:hunter2secret@db:5432/mida"
    settings = load_settings("dev", environ={"DATABASE_URL": url}, root=tmp_path)
    assert settings.database_url.password == "hunter2secret"
    assert "hunter2secret" not in settings.masked_database_url
    assert "hunter2secret" not in repr(settings)


# -- production --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["true", "True", "TRUE"])
def test_production_flag(tmp_path, value):
    write_env(tmp_path, "staging", USE_SQLITE="True", PRODUCTION=value)
    assert load_settings("staging", environ={}, root=tmp_path).production is True


@pytest.mark.parametrize("name", ["prod", "production"])
def test_production_by_env_name_even_when_flag_says_false(tmp_path, name):
    write_env(tmp_path, name, USE_SQLITE="True", PRODUCTION="false")
    assert load_settings(name, environ={}, root=tmp_path).production is True


def test_not_production_by_default(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True")
    assert load_settings("staging", environ={}, root=tmp_path).production is False
    assert load_settings("dev", environ={}, root=tmp_path).production is False
    assert load_settings("dev", environ={"PRODUCTION": "false"}, root=tmp_path).production is False


def test_process_env_production_flag_overrides_file(tmp_path):
    write_env(tmp_path, "staging", USE_SQLITE="True", PRODUCTION="false")
    settings = load_settings("staging", environ={"PRODUCTION": "true"}, root=tmp_path)
    assert settings.production is True


# -- backups -----------------------------------------------------------------------------------
def test_backup_storage_default_and_values(tmp_path):
    assert load_settings("dev", environ={}, root=tmp_path).backup_storage == "local"
    assert load_settings("dev", environ={"BACKUP_STORAGE": "S3"}, root=tmp_path).backup_storage == "s3"


def test_unknown_backup_storage_is_config_error(tmp_path):
    settings = load_settings("dev", environ={"BACKUP_STORAGE": "ftp"}, root=tmp_path)
    with pytest.raises(ConfigError, match="ftp"):
        settings.backup_storage


def test_backup_dir_relative_to_root(tmp_path):
    assert load_settings("dev", environ={}, root=tmp_path).backup_dir == tmp_path / "backups"
    settings = load_settings("dev", environ={"BACKUP_DIR": "store/bk"}, root=tmp_path)
    assert settings.backup_dir == tmp_path / "store" / "bk"
    absolute = tmp_path / "abs"
    settings = load_settings("dev", environ={"BACKUP_DIR": str(absolute)}, root=tmp_path / "r")
    assert settings.backup_dir == absolute


def test_pg_bin_dir(tmp_path):
    assert load_settings("dev", environ={}, root=tmp_path).pg_bin_dir is None
    settings = load_settings("dev", environ={"PG_BIN_DIR": "/opt/pg16/bin"}, root=tmp_path)
    assert settings.pg_bin_dir == "/opt/pg16/bin"


@pytest.mark.parametrize("given", ["postgresql://u:pw@db.internal:5432/mida",
                                   "postgres://u:pw@db.internal:5432/mida"])
def test_a_plain_postgresql_url_uses_the_driver_we_ship(tmp_path, given):
    settings = load_settings("ci", environ={"APP_ENV": "ci", "DATABASE_URL": given}, root=tmp_path)
    url = settings.database_url
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.database, url.password) == ("db.internal", "mida", "pw")
    url.get_dialect().import_dbapi()  # the driver is importable, unlike psycopg 3


# -- durations -------------------------------------------------------------------------------
AGE_UNITS = UNIT_SECONDS  # what CHECK_BACKUP_MAX_AGE and CHECK_VERIFY_MAX_AGE accept


@pytest.mark.parametrize("value, units, seconds", [
    ("500ms", POSTGRES_UNITS, 0.5), (" 2 min ", POSTGRES_UNITS, 120.0),
    ("300", POSTGRES_UNITS, 0.3),  # bare: milliseconds, as PostgreSQL reads it
    ("0", POSTGRES_UNITS, 0.0), ("90m", AGE_UNITS, 5400), ("2d", AGE_UNITS, 172800),
])
def test_parse_duration_in_seconds(value, units, seconds):
    assert parse_duration(value, units) == seconds


@pytest.mark.parametrize("value, units", [
    ("2d", POSTGRES_UNITS), ("90m", POSTGRES_UNITS), ("3600", AGE_UNITS), ("5ms", AGE_UNITS),
    ("5 minutes", POSTGRES_UNITS), ("-1h", AGE_UNITS), ("1.5h", AGE_UNITS), ("5S", POSTGRES_UNITS),
    ("", POSTGRES_UNITS), ("soon", AGE_UNITS),
])
def test_parse_duration_refuses_units_the_setting_does_not_accept(value, units):
    assert parse_duration(value, units) is None


def test_duration_setting_keeps_the_postgresql_text_and_gives_seconds(tmp_path):
    settings = load_settings("dev", environ={"MIGRATION_LOCK_TIMEOUT": " 2 min "}, root=tmp_path)
    assert settings.MIGRATION_LOCK_TIMEOUT.text == "2min"
    assert settings.MIGRATION_LOCK_TIMEOUT == 120.0
    assert settings.MIGRATION_LOCK_RETRY_DELAY == 5.0  # the default
    assert settings.MIGRATION_STATEMENT_TIMEOUT is None


def test_a_malformed_duration_setting_is_config_error_naming_it(tmp_path):
    settings = load_settings("dev", environ={"MIGRATION_LOCK_TIMEOUT": "2d"}, root=tmp_path)
    with pytest.raises(ConfigError, match="MIGRATION_LOCK_TIMEOUT '2d' is not a duration"):
        settings.MIGRATION_LOCK_TIMEOUT


# -- issue 18: no database name, a line python-dotenv cannot parse, secrets in the query -----
def test_postgres_settings_without_a_database_name_are_a_config_error(tmp_path):
    write_env(tmp_path, "prod", **{k: v for k, v in PG.items() if k != "POSTGRES_DB"})
    with pytest.raises(ConfigError, match="POSTGRES_DB is not set for env 'prod'"):
        load_settings("prod", environ={}, root=tmp_path).database_url


def test_a_postgresql_database_url_without_a_database_name_is_a_config_error(tmp_path):
    env = {"APP_ENV": "prod", "DATABASE_URL": "postgresql://mida@db.example.internal:5432"}
    with pytest.raises(ConfigError, match="DATABASE_URL has no database name"):
        load_settings("prod", environ=env, root=tmp_path).database_url


def test_a_line_python_dotenv_cannot_parse_is_an_error_naming_file_and_line(tmp_path, caplog):
    (tmp_path / ".env.prod").write_text(
        "POSTGRES_SERVER=db.example.internal\n# the database\nPOSTGRES_DB='mida_prod\n"
        "POSTGRES_USER=mida\n")
    with pytest.raises(ConfigError, match=r"\.env\.prod line 3 cannot be read"):
        load_settings("prod", environ={}, root=tmp_path)
    # Reported as the error, not printed as python-dotenv's warning besides.
    assert not [r for r in caplog.records if "could not parse" in r.getMessage()]


def test_a_bad_line_in_the_shared_env_file_is_an_error_too(tmp_path):
    (tmp_path / ".env").write_text("A=1\nB=\"open\n")
    write_env(tmp_path, "prod", **PG)
    with pytest.raises(ConfigError, match=r"\.env line 2 cannot be read"):
        load_settings("prod", environ={}, root=tmp_path)


@pytest.mark.parametrize("key", ["password", "sslpassword"])
def test_masked_url_hides_secrets_in_the_query_string(tmp_path, key):
    url = f"postgresql://mida@db/mida?sslmode=require&{key}={quote_plus(AWKWARD)}"
    s = load_settings("prod", environ={"APP_ENV": "prod", "DATABASE_URL": url}, root=tmp_path)
    masked = s.masked_database_url
    assert f"{key}=***" in masked and "sslmode=require" in masked, masked
    for form in (AWKWARD, quote_plus(AWKWARD), quote(AWKWARD, safe=""), "p@ss", "p%40ss"):
        assert form not in masked
