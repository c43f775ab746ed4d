"""The wire rules, written once: what a channel, an event type, a tenant and a user id look like, a
channel's namespace, the typed seed events' statuses and severities, the ingest stream's name and
fields, the sizes, what a notification may carry, and which JSON the service can hold as sent.

They are promises of the service's contract (sections 2-4, 7, 9 and 10) that both sides keep: the
service refuses what breaks them (it imports this module, through `app.rules`), and this package
checks them in the backend worker, so a mistake fails there instead of in `rt:ingest:rejected` or
as an HTTP error. There is no second copy to drift.

Standard library only, and no import from the rest of this package: the service imports it on
its hot path, and a worker needs nothing else to check a name. Nothing here raises; the functions
answer yes or no (or say what is wrong), and the callers raise (the service its named errors,
`forge_publisher.errors` in a worker).

Use the `is_*` functions rather than `PATTERN.match`: they refuse a value that is not a string,
and they match the whole string (`re.match` with `$` also accepts a trailing newline, which the
contract's patterns, and pydantic's checks of the same patterns, do not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeGuard

# --- names (contract section 2; the JWT claims of section 1) ----------------------------------

CHANNEL_PATTERN: Final = re.compile(r"^[a-z0-9_-]+:[A-Za-z0-9_.:@-]{1,128}$")  # namespace:id
TYPE_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # an event type (and a notification's)
TENANT_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")  # `tid`; no ':' so keys and channels stay unambiguous
USER_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")  # `sub`, a notification's user_id


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

USER_NAMESPACE: Final = "user"  # user:<sub>, joined automatically, its user's alone
TENANT_NAMESPACE: Final = "tenant"  # tenant:<tid>, joined automatically, its tenant's alone
ANALYSIS_NAMESPACE: Final = "analysis"  # analysis:<id>, where analysis.progress goes
JOB_NAMESPACE: Final = "job"  # job:<id>, where refactoring.status goes


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

PROGRESS_TYPE: Final = "analysis.progress"  # data.progress, 0-100, never backwards
JOB_STATUS_TYPE: Final = "refactoring.status"  # data.status, forward only, never out of a final state
ALERT_TYPE: Final = "system.alert"  # data.severity

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
Severity = Literal["info", "warning", "critical"]

# A job status may only move to a higher rank; the highest rank is final.
JOB_STATUS_RANK: Mapping[JobStatus, int] = MappingProxyType(
    {"queued": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2})
JOB_STATUSES: tuple[JobStatus, ...] = tuple(JOB_STATUS_RANK)
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    s for s, rank in JOB_STATUS_RANK.items() if rank == max(JOB_STATUS_RANK.values()))
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")


def is_progress(value: object) -> bool:
    """A number from 0 to 100 (a JSON boolean is not a number)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 100


def is_job_status(value: object) -> TypeGuard[JobStatus]:
    return isinstance(value, str) and value in JOB_STATUS_RANK


def is_severity(value: object) -> TypeGuard[Severity]:
    return isinstance(value, str) and value in SEVERITIES


def typed_problem(type_: str, data: Mapping[str, Any]) -> str | None:
    """What is wrong with a typed seed event's data, or None (also for any other type, which is
    free-form). Order (progress backwards, a status out of order) needs the channel's history and
    is the service's to check (a 409 `conflict`)."""
    if type_ == PROGRESS_TYPE and not is_progress(data.get("progress")):
        return f"{PROGRESS_TYPE} needs data.progress, a number from 0 to 100"
    if type_ == JOB_STATUS_TYPE and not is_job_status(data.get("status")):
        return f"{JOB_STATUS_TYPE} needs data.status in {', '.join(JOB_STATUSES)}"
    if type_ == ALERT_TYPE and not is_severity(data.get("severity")):
        return f"{ALERT_TYPE} needs data.severity in {', '.join(SEVERITIES)}"
    return None


# --- the worker ingest (contract section 4) ---------------------------------------------------

DEFAULT_PREFIX: Final = "rt"  # the service's REDIS_PREFIX unless its operator set another
# An entry's fields: tenant, channel, type, data (a JSON object, as text) and optionally
# idempotency_key (without one, the entry id is the key, so a retried entry publishes once).
INGEST_FIELDS: Final = ("tenant", "channel", "type", "data", "idempotency_key")


def ingest_stream(prefix: str = DEFAULT_PREFIX) -> str:
    """The stream workers XADD to: `rt:ingest`."""
    return f"{prefix}:ingest"


# --- sizes (contract section 3) ---------------------------------------------------------------

DEFAULT_MAX_EVENT_BYTES: Final = 65536  # MAX_EVENT_BYTES unless the operator set another; larger is a 413
ENVELOPE_OVERHEAD: Final = 128  # an envelope's id, ts and punctuation, generously counted
IDEMPOTENCY_KEY_MAX: Final = 200  # characters of an idempotency key (an event's, a notification's)


def event_size(channel: str, type_: str, encoded_data: bytes) -> int:
    """What an event counts against MAX_EVENT_BYTES: its data as compact UTF-8 JSON, its channel,
    its type, and the envelope around them."""
    return len(encoded_data) + len(channel) + len(type_) + ENVELOPE_OVERHEAD


# --- notifications (contract sections 7 and 10) -----------------------------------------------

DEFAULT_CATEGORY: Final = "general"
CATEGORY_PATTERN: Final = re.compile(r"^[a-z0-9_.-]{1,64}$")  # what preferences switch on and off
TAG_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ACTION_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
URL_PATTERN: Final = re.compile(r"^(https?://|/)")  # an http(s) URL or a path of the app (a prefix)
TITLE_MAX: Final = 200  # characters; at least 1
MESSAGE_MAX: Final = 10_000
URL_MAX: Final = 2048
ACTION_LABEL_MAX: Final = 100  # characters; at least 1
ACTIONS_MAX: Final = 2  # buttons on one notification, the primary first, ids unique
TAGS_MAX: Final = 10  # before repeats are dropped


def is_category(value: object) -> TypeGuard[str]:
    return _full(CATEGORY_PATTERN, value)


def is_tag(value: object) -> TypeGuard[str]:
    return _full(TAG_PATTERN, value)


def is_action_id(value: object) -> TypeGuard[str]:
    return _full(ACTION_ID_PATTERN, value)


def is_url(value: object) -> TypeGuard[str]:
    """An action_url (or an action's url): http(s), or a path of the app, at most URL_MAX long."""
    return isinstance(value, str) and len(value) <= URL_MAX and URL_PATTERN.match(value) is not None


# --- JSON the service can hold as sent (contract section 10, last bullet) ---------------------
# JSON allows, and Python's parser accepts, values the service's encoder or databases refuse or
# would change on the way (a 422 `unrepresentable_json`; an ingest entry kept aside):
# - integers outside -2^63 .. 2^64-1 (the service's encoder takes int64 and uint64);
# - other numbers outside that band, or not finite (Postgres JSONB gives `1e20` back as an integer
#   no event could encode; NaN and Infinity are not JSON);
# - lone surrogates (not UTF-8) and NUL characters (Postgres refuses them) in a string or a key;
# - nesting deeper than MAX_DEPTH containers (the document's root is level 1).
# `is_representable` is the fast walk the service runs on every publish (a loop, not recursion,
# naming nothing); `representable_problem` the slower one that finds the JSON path for a message.

INT_MIN: Final = -(1 << 63)  # int64's least: the most negative integer the service encodes
INT_MAX: Final = (1 << 64) - 1  # uint64's greatest: the largest integer the service encodes
MAX_DEPTH: Final = 32  # containers nested in one document, its root included

# A float must lie strictly between these: finite, and within the integers above (a float as
# large as 2^64 is an integer, and JSONB would give it back as one).
_FLOAT_LOW, _FLOAT_HIGH = float(INT_MIN), float(INT_MAX + 1)

_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_LIMIT = 200  # characters of a JSON path quoted in a message
_KEY_LIMIT = 40  # characters of one key quoted in a path


def text_problem(text: str) -> str | None:
    """What makes a string unstorable (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return "a lone surrogate (an unpaired \\ud800-\\udfff)"
    return None


def _bad_text(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def is_representable(root: Any, depth: int = 1) -> bool:
    """True when nothing in `root` (parsed JSON; `depth` its level in its document) is
    unrepresentable: the fast walk, on every publish."""
    kind = type(root)
    if kind is not dict and kind is not list:
        return _scalar_ok(root)
    surrogate = _SURROGATE.search
    low, high = _FLOAT_LOW, _FLOAT_HIGH
    stack: list[tuple[Any, int]] = [(root, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        if level > MAX_DEPTH:
            return False
        if type(node) is dict:
            for key in node:
                if "\x00" in key or (not key.isascii() and surrogate(key)):
                    return False
            values = node.values()
        else:
            values = node
        for item in values:
            kind = type(item)
            if kind is str:
                if "\x00" in item or (not item.isascii() and surrogate(item)):
                    return False
            elif kind is int:
                if not INT_MIN <= item <= INT_MAX:
                    return False
            elif kind is dict or kind is list:
                push((item, level + 1))
            elif kind is float and not low < item < high:  # NaN compares false: refused too
                return False
    return True


def _scalar_ok(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not _bad_text(value)
    if kind is int:
        return bool(INT_MIN <= value <= INT_MAX)
    if kind is float:
        return bool(_FLOAT_LOW < value < _FLOAT_HIGH)
    return True


def _scalar_problem(value: Any) -> str | None:
    if _scalar_ok(value):
        return None
    if type(value) is str:
        return f"a string with {text_problem(value)}"
    if type(value) is int:
        return "an integer beyond 64 bits (integers must be within -2^63 .. 2^64-1)"
    if value - value == 0:  # finite
        return "a number beyond 64 bits (numbers must be within -2^63 .. 2^64-1)"
    return "a number that is not finite (NaN, Infinity, or beyond a double's range)"


def representable_problem(root: Any, path: str = "$", depth: int = 1) -> str | None:
    """The first unrepresentable thing in `root`, in document order, with its JSON path
    (`$.data.n is an integer beyond 64 bits ...`), or None."""
    if is_representable(root, depth):
        return None
    stack: list[tuple[Any, str, int]] = [(root, path, depth)]
    while stack:
        node, where, level = stack.pop()
        kind = type(node)
        if kind is not dict and kind is not list:
            problem = _scalar_problem(node)
            if problem is not None:
                return f"{_short(where)} is {problem}"
            continue
        if level > MAX_DEPTH:
            return f"{_short(where)} nests deeper than {MAX_DEPTH} levels"
        if kind is dict:
            members = list(node.items())
            for key, _ in members:
                if type(key) is str and _bad_text(key):
                    return f"the key of {_short(_member(where, key))} has {text_problem(key)}"
            children = [(value, _member(where, key), level + 1) for key, value in members]
        else:
            children = [(value, f"{where}[{n}]", level + 1) for n, value in enumerate(node)]
        stack.extend(reversed(children))  # document order: the first problem a reader meets
    return f"{_short(path)} cannot be stored or encoded faithfully"  # not reached: is_representable agrees


def quoted(text: str) -> str:
    """A JSON string literal in ASCII, cut to 40 characters: it quotes a NUL or a lone surrogate
    (in a message about one) without carrying one."""
    return json.dumps(text[:_KEY_LIMIT] + ("..." if len(text) > _KEY_LIMIT else ""))


def _member(path: str, key: Any) -> str:
    key = str(key)
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{quoted(key)}]"


def _short(path: str) -> str:
    return path if len(path) <= _PATH_LIMIT else path[: _PATH_LIMIT // 2] + "..." + path[-_PATH_LIMIT // 2:]
