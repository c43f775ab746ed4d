"""Placeholder until the shared rules module lands (merged from main)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def namespace(channel: str) -> str:
    return channel.partition(":")[0]
