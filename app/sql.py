"""SQL helpers shared by the stores: column types that behave the same on SQLite and Postgres,
and the dialect's own INSERT (for ON CONFLICT, which both support)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, CursorResult, DateTime
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import TypeDecorator

from app.rules import iso_ms

# JSONB on Postgres (compact, comparable); SQLite keeps JSON as text.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC instant stored without a zone (SQLite has none) and returned timezone-aware.

    Naive values on both backends keep comparisons and keyset cursors identical on each.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UTCDateTime needs a timezone-aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """The wire form of a timestamp: ISO 8601, UTC, milliseconds, `Z` (as event envelopes)."""
    return None if value is None else iso_ms(value)


async def rows_changed(db: AsyncSession, statement: UpdateBase) -> int:
    """Run an UPDATE or DELETE; how many rows it matched. (execute() is typed to return a Result
    for any statement; for these it is a CursorResult, which has the rowcount.)"""
    return cast(CursorResult[Any], await db.execute(statement)).rowcount


def insert(db: AsyncSession, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """INSERT with `on_conflict_do_nothing` for the database session's backend (Postgres or SQLite)."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
