"""Alembic's environment: the URL comes from the project's settings, never from alembic.ini.

`invoke` (app/ops/schema/migrations.py) hands in the URL object through `config.attributes`, as
Alembic's cookbook shares a connection. Run as the bare `alembic` command, the URL is read from
the settings of APP_ENV (default `dev`), exactly as `invoke --env` would read them.
"""
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from app.models import Base

config = context.config
target_metadata = Base.metadata

# Only the bare `alembic` command line configures logging; invoke sets up its own output.
if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url():
    """A SQLAlchemy URL object, either way."""
    url = config.attributes.get("database_url")
    if url is not None:
        return url
    from app.settings import load_settings
    return load_settings().database_url


def configure_options(dialect_name: str) -> dict:
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table so future ALTERs work.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
                      **configure_options(url.get_backend_name()))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = create_engine(database_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # lock_timeout in every env, statement_timeout when set (app/ops/schema/migrations.py): a
        # migration that waits on a busy table gives up (and is tried again) instead of
        # stalling the API's writes queued behind it.
        timeouts = config.attributes.get("postgres_timeouts") or {}
        if timeouts and connection.dialect.name == "postgresql":
            for name, value in timeouts.items():
                connection.exec_driver_sql(f"SET {name} = '{value}'")
            connection.commit()
        context.configure(connection=connection, **configure_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
            # invoke's lock check (app/ops/commands/release.py): raising here rolls the change back.
            before_commit = config.attributes.get("before_commit")
            if before_commit is not None:
                before_commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
