"""SQL storage plumbing: one declarative base, engine construction and migrations.

The same code runs on SQLite (development, single node) and PostgreSQL (production);
the differences are contained in `create_engine`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

if TYPE_CHECKING:
    from alembic.config import Config

    from app.settings import Settings

# Deterministic constraint names, so migrations can drop/alter constraints by name on
# every backend (SQLite batch mode needs them; Postgres would otherwise invent its own).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every ORM model; its metadata is what Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def ensure_sqlite_dir(url: str | URL) -> None:
    """Create the directory of a file-backed SQLite database; SQLite creates the file, not its parents."""
    parsed = make_url(url)
    if not _is_sqlite(parsed):
        return
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or parsed.query.get("mode") == "memory":
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while one writer commits (the server and `migrate` may overlap);
    # SQLite ignores foreign keys unless asked, Postgres always enforces them.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_engine(settings: Settings, **engine_kwargs: Any) -> AsyncEngine:
    """The service's engine for `settings.sqlalchemy_url`.

    SQLite: parent directory created, 30 s busy timeout (writers queue instead of failing
    with "database is locked"), WAL on every connection. Postgres: connections are
    pre-pinged, so a restarted server costs one retry, not a failed request.
    Extra keyword arguments go to `create_async_engine` (e.g. `poolclass=NullPool`).
    """
    url = make_url(settings.sqlalchemy_url)
    kwargs: dict[str, Any]
    if _is_sqlite(url):
        ensure_sqlite_dir(url)
        kwargs = {"connect_args": {"timeout": 30}}
    else:
        kwargs = {"pool_pre_ping": True}
    kwargs.update(engine_kwargs)
    engine = create_async_engine(url, **kwargs)
    if _is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Database sessions bound to `engine`.

    expire_on_commit=False: after commit, attribute access must not trigger lazy IO,
    which async sessions cannot do implicitly.
    """
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine, timeout: float = 2.0) -> None:
    """Round-trip `SELECT 1`; raises (TimeoutError or the driver's error) if the database is unusable.

    The timeout keeps health checks answering promptly when the database hangs rather than refuses.
    """

    async def _select_one() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    await asyncio.wait_for(_select_one(), timeout)


def _alembic_ini() -> Path:
    # ALEMBIC_CONFIG (also honoured by the alembic CLI) wins; then the repo checkout this
    # package lives in; then the working directory (a non-editable install, e.g. the image).
    candidates: list[Path] = []
    if os.environ.get("ALEMBIC_CONFIG"):
        candidates.append(Path(os.environ["ALEMBIC_CONFIG"]))
    candidates += [Path(__file__).resolve().parent.parent / "alembic.ini", Path.cwd() / "alembic.ini"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"alembic.ini not found (looked at {', '.join(map(str, candidates))})")


def _alembic_config(settings: Settings | None = None, connection: Any = None) -> Config:
    from alembic.config import Config

    config = Config(str(_alembic_ini()))
    # migrations/env.py reads these instead of building its own Settings, engine or logging setup.
    config.attributes["configure_logging"] = False
    if settings is not None:
        config.attributes["settings"] = settings
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def run_migrations(settings: Settings) -> None:
    """`alembic upgrade head` against `settings.sqlalchemy_url`.

    Synchronous (Alembic's env runs its own event loop): call it from plain code such as
    the CLI, not from inside a running loop — there use `run_migrations_async`.
    Logging is left to the caller; alembic.ini's logging section applies only to the alembic CLI.
    """
    from alembic import command

    command.upgrade(_alembic_config(settings), "head")


async def run_migrations_async(engine: AsyncEngine) -> None:
    """`alembic upgrade head` on `engine`, for code already inside an event loop (e.g. test fixtures)."""
    from alembic import command

    def _upgrade(sync_connection: Any) -> None:
        command.upgrade(_alembic_config(connection=sync_connection), "head")

    connection: AsyncConnection
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
