"""The wire rules as the service reads them: every app module imports them from here.

The rules themselves (what a channel, an event type, a tenant and a user id look like, the typed
seed events' statuses and severities, namespaces, the ingest stream, sizes, a notification's
fields, which JSON the service can hold as sent) live in the publisher package,
`forge_publisher.rules` (clients/python/, installed with the service), so a backend worker checks
exactly what the service checks and there is no copy to drift. This module re-exports them, and
adds what only the service needs: the envelope's timestamp format.

Use the `is_*` functions rather than `PATTERN.match`: they refuse a value that is not a string,
and they match the whole string (`re.match` with `$` also accepts a trailing newline, which the
contract's patterns, and pydantic's checks of the same patterns, do not).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from forge_publisher.rules import (
    ACTION_ID_PATTERN,
    ACTION_LABEL_MAX,
    ACTIONS_MAX,
    ALERT_TYPE,
    ANALYSIS_NAMESPACE,
    CATEGORY_PATTERN,
    CHANNEL_PATTERN,
    DEFAULT_CATEGORY,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_PREFIX,
    ENVELOPE_OVERHEAD,
    IDEMPOTENCY_KEY_MAX,
    INGEST_FIELDS,
    INT_MAX,
    INT_MIN,
    JOB_NAMESPACE,
    JOB_STATUS_RANK,
    JOB_STATUS_TYPE,
    JOB_STATUSES,
    MAX_DEPTH,
    MESSAGE_MAX,
    PROGRESS_TYPE,
    SEVERITIES,
    TAG_PATTERN,
    TAGS_MAX,
    TENANT_NAMESPACE,
    TENANT_PATTERN,
    TERMINAL_STATUSES,
    TITLE_MAX,
    TYPE_PATTERN,
    URL_MAX,
    URL_PATTERN,
    USER_NAMESPACE,
    USER_PATTERN,
    JobStatus,
    Severity,
    event_size,
    ingest_stream,
    is_action_id,
    is_category,
    is_channel,
    is_job_status,
    is_progress,
    is_representable,
    is_severity,
    is_tag,
    is_tenant,
    is_type,
    is_url,
    is_user,
    namespace,
    quoted,
    representable_problem,
    split_channel,
    tenant_channel,
    text_problem,
    typed_problem,
    user_channel,
)

# the re-exports, explicit (mypy's implicit_reexport is off for this module)
__all__ = [
    "ACTIONS_MAX",
    "ACTION_ID_PATTERN",
    "ACTION_LABEL_MAX",
    "ALERT_TYPE",
    "ANALYSIS_NAMESPACE",
    "CATEGORY_PATTERN",
    "CHANNEL_PATTERN",
    "DEFAULT_CATEGORY",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_PREFIX",
    "ENVELOPE_OVERHEAD",
    "IDEMPOTENCY_KEY_MAX",
    "INGEST_FIELDS",
    "INT_MAX",
    "INT_MIN",
    "JOB_NAMESPACE",
    "JOB_STATUSES",
    "JOB_STATUS_RANK",
    "JOB_STATUS_TYPE",
    "MAX_DEPTH",
    "MESSAGE_MAX",
    "PROGRESS_TYPE",
    "SEVERITIES",
    "TAGS_MAX",
    "TAG_PATTERN",
    "TENANT_NAMESPACE",
    "TENANT_PATTERN",
    "TERMINAL_STATUSES",
    "TITLE_MAX",
    "TYPE_PATTERN",
    "URL_MAX",
    "URL_PATTERN",
    "USER_NAMESPACE",
    "USER_PATTERN",
    "JobStatus",
    "Severity",
    "event_size",
    "ingest_stream",
    "is_action_id",
    "is_category",
    "is_channel",
    "is_job_status",
    "is_progress",
    "is_representable",
    "is_severity",
    "is_tag",
    "is_tenant",
    "is_type",
    "is_url",
    "is_user",
    "iso_ms",
    "namespace",
    "quoted",
    "representable_problem",
    "split_channel",
    "tenant_channel",
    "text_problem",
    "typed_problem",
    "user_channel",
]


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
