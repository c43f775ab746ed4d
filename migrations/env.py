"""Alembic environment: async engine, URL from the service's own Settings.

Three ways in:
  * `alembic ...` on the command line: Settings() from the environment, logging from alembic.ini;
  * app.db.run_migrations(settings): that Settings object, the caller's logging;
  * app.db.run_migrations_async(engine): a connection handed over in config.attributes.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url

# Modules defining ORM models must be imported so their tables join Base.metadata;
# otherwise `alembic revision --autogenerate` would propose dropping them.
import app.notifications.models
import app.push.models  # noqa: F401
from app.db import Base, create_engine, ensure_sqlite_dir
from app.settings import Settings

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    # Keep loggers the host process already set up (fileConfig disables them by default).
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    return settings if settings is not None else Settings()


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: emit the SQL instead of running it; no database needed."""
    url = make_url(_settings().sqlalchemy_url)
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    settings = _settings()
    ensure_sqlite_dir(settings.sqlalchemy_url)
    # The service's own engine setup (SQLite busy timeout and WAL), without a pool:
    # a migration run is one connection, then the process usually exits.
    engine = create_engine(settings, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
