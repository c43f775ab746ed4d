"""The wire rules, written once: what a channel, an event type, a tenant and a user id look like,
the typed seed events' statuses and severities, a channel's namespace, and the timestamp format.

They are promises of the contract (sections 2-4 and 9) that more than one side must keep: the
service refuses what breaks them, and the publisher helper (app/publisher.py) checks them in the
backend worker, so a mistake fails there instead of in `rt:ingest:rejected`. Both read them from
here, so the two cannot drift apart (tests/test_rules.py holds them to agree).

Standard library only, and no import from the app: a standalone publisher package can ship this
file as it is (a test inspects its imports). Nothing here raises the service's named errors; the
functions answer yes or no (or say what is wrong), and the callers raise (`app.channels`,
`app.core.typed`, `app.core.publish`, `app.auth`, `ValueError` in the publisher helper).

Use the `is_*` functions rather than `PATTERN.match`: they refuse a value that is not a string,
and they match the whole string (`re.match` with `$` also accepts a trailing newline, which the
contract's patterns, and pydantic's checks of the same patterns, do not).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any, TypeGuard

# --- names (contract section 2; the JWT claims of section 1) ----------------------------------

CHANNEL_PATTERN = re.compile(r"^[a-z0-9_-]+:[A-Za-z0-9_.:@-]{1,128}$")  # namespace:id
TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # an event type (and a notification's)
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")  # `tid`; no ':' so keys and channels stay unambiguous
USER_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")  # `sub`, a notification's user_id


def _full(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def is_channel(value: object) -> TypeGuard[str]:
    return _full(CHANNEL_PATTERN, value)


def is_type(value: object) -> TypeGuard[str]:
    return _full(TYPE_PATTERN, value)


def is_tenant(value: object) -> TypeGuard[str]:
    return _full(TENANT_PATTERN, value)


def is_user(value: object) -> TypeGuard[str]:
    return _full(USER_PATTERN, value)


# --- namespaces ------------------------------------------------------------------------------

USER_NAMESPACE = "user"  # user:<sub>, joined automatically, its user's alone
TENANT_NAMESPACE = "tenant"  # tenant:<tid>, joined automatically, its tenant's alone
ANALYSIS_NAMESPACE = "analysis"  # analysis:<id>, where analysis.progress goes
JOB_NAMESPACE = "job"  # job:<id>, where refactoring.status goes


def namespace(channel: str) -> str:
    """`repository` of `repository:r1` (what presence and live state are enabled by)."""
    return channel.partition(":")[0]


def split_channel(channel: str) -> tuple[str, str]:
    """(`repository`, `r1`) of `repository:r1`; the id may itself contain ':'."""
    space, _, ident = channel.partition(":")
    return space, ident


def user_channel(user: str) -> str:
    return f"{USER_NAMESPACE}:{user}"


def tenant_channel(tenant: str) -> str:
    return f"{TENANT_NAMESPACE}:{tenant}"


# --- the typed seed events (contract section 9) -----------------------------------------------

PROGRESS_TYPE = "analysis.progress"  # data.progress, 0-100, never backwards
JOB_STATUS_TYPE = "refactoring.status"  # data.status, forward only, never out of a final state
ALERT_TYPE = "system.alert"  # data.severity

# A job status may only move to a higher rank; the highest rank is final.
JOB_STATUS_RANK: Mapping[str, int] = MappingProxyType({"queued": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2})
JOB_STATUSES: tuple[str, ...] = tuple(JOB_STATUS_RANK)
TERMINAL_STATUSES: frozenset[str] = frozenset(s for s, rank in JOB_STATUS_RANK.items() if rank == max(JOB_STATUS_RANK.values()))
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


def is_progress(value: object) -> bool:
    """A number from 0 to 100 (a JSON boolean is not a number)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 100


def is_job_status(value: object) -> bool:
    return isinstance(value, str) and value in JOB_STATUS_RANK


def is_severity(value: object) -> bool:
    return isinstance(value, str) and value in SEVERITIES


def typed_problem(type_: str, data: Mapping[str, Any]) -> str | None:
    """What is wrong with a typed seed event's data, or None (also for any other type, which is
    free-form). Order (progress backwards, a status out of order) needs the channel's history and
    is the service's to check."""
    if type_ == PROGRESS_TYPE and not is_progress(data.get("progress")):
        return f"{PROGRESS_TYPE} needs data.progress, a number from 0 to 100"
    if type_ == JOB_STATUS_TYPE and not is_job_status(data.get("status")):
        return f"{JOB_STATUS_TYPE} needs data.status in {', '.join(JOB_STATUSES)}"
    if type_ == ALERT_TYPE and not is_severity(data.get("severity")):
        return f"{ALERT_TYPE} needs data.severity in {', '.join(SEVERITIES)}"
    return None


# --- timestamps (contract section 3: "ts": "2026-11-28T06:00:00.000Z") -------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(moment: int | datetime) -> str:
    """The wire form of a moment: ISO 8601 in UTC, milliseconds, `Z`.

    `moment` is milliseconds since the epoch (an event id's first part, a presence `since`) or a
    timezone-aware datetime (a database column; sub-millisecond digits are dropped, not rounded).
    iso_ms(1795845600000) == "2026-11-28T06:00:00.000Z".
    """
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("iso_ms needs a timezone-aware datetime")
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # every event's envelope carries one: its second's text is made once (events come in time
    # order, so a small cache holds it): ~0.8 us a call instead of ~5.6 us for a datetime
    seconds, millis = divmod(moment, 1000)  # floor division: -1 is 23:59:59.999 of the day before
    return f"{_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds").removesuffix("+00:00")
