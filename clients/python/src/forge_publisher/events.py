"""What a publish sends, built and checked before it is sent: the event (for the ingest stream and
for `POST /v1/events`), the typed seed events, and the notification (`POST /v1/notifications`).

Each check is the service's own rule (`forge_publisher.rules`, which the service imports), so what
passes here is what the service accepts, except for what needs the service's state or settings:
the order of typed events (progress never backwards, a job status only forward: a 409 `Conflict`),
a MAX_EVENT_BYTES other than the one given here, rate limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, NoReturn, NotRequired, TypedDict, TypeVar

from forge_publisher import rules
from forge_publisher.errors import BadChannel, EventTooLarge, InvalidEvent, InvalidRequest, Unrepresentable
from forge_publisher.rules import JobStatus, Severity


class Event(NamedTuple):
    """An event to publish: where, what, and its data (a JSON object)."""

    channel: str
    type: str
    data: dict[str, Any]


class CheckedEvent(NamedTuple):
    """An event that passed every local check, its data encoded as the service will count it."""

    tenant: str
    channel: str
    type: str
    data: bytes  # compact UTF-8 JSON
    idempotency_key: str | None


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON, what the service stores and counts (NaN and Infinity are not JSON)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def check_event(tenant: str, channel: str, type_: str, data: Mapping[str, Any] | None, *,
                idempotency_key: str | None = None,
                max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> CheckedEvent:
    """Raise the error the service would answer (`local=True`) for what it would refuse; else the
    event with its data encoded. `max_event_bytes`: the service's MAX_EVENT_BYTES (None: leave the
    size to the service)."""
    if not rules.is_tenant(tenant):
        raise InvalidEvent(f"invalid tenant {tenant!r}: expected 1-128 of [A-Za-z0-9_.@-]", local=True)
    if not rules.is_channel(channel):
        raise BadChannel(f"invalid channel name {channel!r}: expected namespace:id "
                         "(namespace [a-z0-9_-]+, id 1-128 of [A-Za-z0-9_.:@-])", channel=str(channel)[:140], local=True)
    if not rules.is_type(type_):
        raise BadChannel(f"invalid event type {type_!r}: expected 1-64 of [A-Za-z0-9_.:-]", local=True)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidEvent("data must be a JSON object (a dict)", local=True)
    data = dict(data)
    problem = rules.representable_problem(data, "$.data", 2)
    if problem is not None:
        raise Unrepresentable(problem, local=True)
    try:
        encoded = encode(data)
    except (TypeError, ValueError) as exc:  # a value JSON has no form for (a set, a datetime, bytes)
        raise InvalidEvent(f"data cannot be encoded as JSON: {exc}", local=True) from None
    if max_event_bytes is not None:
        size = rules.event_size(channel, type_, encoded)
        if size > max_event_bytes:
            raise EventTooLarge(f"event is {size} bytes; the limit is {max_event_bytes}", channel=channel, local=True)
    problem = rules.typed_problem(type_, data)
    if problem is not None:
        raise InvalidEvent(problem, channel=channel, local=True)
    return CheckedEvent(tenant, channel, type_, encoded, _idempotency_key(idempotency_key))


def _idempotency_key(key: str | None) -> str | None:
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        _refuse("idempotency_key", "expected a string")
    if len(key) > rules.IDEMPOTENCY_KEY_MAX:
        _refuse("idempotency_key", f"expected at most {rules.IDEMPOTENCY_KEY_MAX} characters, got {len(key)}")
    problem = rules.text_problem(key)
    if problem is not None:
        raise Unrepresentable(f"$.idempotency_key is a string with {problem}", local=True)
    return key


# --- the typed seed events (contract section 9) -----------------------------------------------

def progress_event(analysis_id: str, progress: float, **extra: Any) -> Event:
    """`analysis.progress` on `analysis:<id>`: `{"analysisId", "progress", **extra}`, progress 0-100."""
    if not rules.is_progress(progress):
        raise InvalidEvent(f"{rules.PROGRESS_TYPE} needs progress, a number from 0 to 100 (got {progress!r})", local=True)
    return Event(f"{rules.ANALYSIS_NAMESPACE}:{analysis_id}", rules.PROGRESS_TYPE,
                 {"analysisId": analysis_id, "progress": progress, **extra})


def job_status_event(job_id: str, status: JobStatus, **extra: Any) -> Event:
    """`refactoring.status` on `job:<id>`: `{"jobId", "status", **extra}`, a status of JOB_STATUSES."""
    if not rules.is_job_status(status):
        raise InvalidEvent(f"{rules.JOB_STATUS_TYPE} needs status in {', '.join(rules.JOB_STATUSES)} (got {status!r})",
                           local=True)
    return Event(f"{rules.JOB_NAMESPACE}:{job_id}", rules.JOB_STATUS_TYPE, {"jobId": job_id, "status": status, **extra})


def alert_event(tenant: str, severity: Severity, message: str, **extra: Any) -> Event:
    """`system.alert` on `tenant:<tenant>` (every connection of the tenant has joined it):
    `{"severity", "message", **extra}`."""
    if not rules.is_severity(severity):
        raise InvalidEvent(f"{rules.ALERT_TYPE} needs severity in {', '.join(rules.SEVERITIES)} (got {severity!r})",
                           local=True)
    return Event(rules.tenant_channel(tenant), rules.ALERT_TYPE, {"severity": severity, "message": message, **extra})


# --- notifications (contract sections 7 and 10) -----------------------------------------------

class Action(TypedDict):
    """A button on a notification (the first is the primary one); the one a user takes is recorded."""

    id: str
    label: str
    url: NotRequired[str | None]


class Notification(TypedDict):
    """A stored notification, as `POST /v1/notifications` answers it."""

    id: str
    tenant: str
    user_id: str
    type: str
    category: str
    title: str
    message: str
    action_url: str | None
    data: dict[str, Any]
    idempotency_key: str | None
    created_at: str
    seen_at: str | None
    read_at: str | None
    archived_at: str | None
    actions: list[Action]
    tags: list[str]
    action_taken: str | None
    acted_at: str | None
    snoozed_until: str | None


def notification_body(tenant: str, user_id: str, type_: str, title: str, message: str = "", *,
                      action_url: str | None = None, data: Mapping[str, Any] | None = None, category: str | None = None,
                      idempotency_key: str | None = None, actions: Sequence[Action] = (),
                      tags: Iterable[str] = ()) -> bytes:
    """The JSON body of `POST /v1/notifications`, checked as the service checks it (raises
    `InvalidRequest`, or `Unrepresentable`, with `local=True`)."""
    if not rules.is_tenant(tenant):
        _refuse("tenant", f"expected 1-128 of [A-Za-z0-9_.@-], got {tenant!r}")
    if not rules.is_user(user_id):
        _refuse("user_id", f"expected 1-128 of [A-Za-z0-9_.:@-], got {user_id!r}")
    if not rules.is_type(type_):
        _refuse("type", f"expected 1-64 of [A-Za-z0-9_.:-], got {type_!r}")
    _text("title", title, 1, rules.TITLE_MAX)
    _text("message", message, 0, rules.MESSAGE_MAX)
    body: dict[str, Any] = {"tenant": tenant, "user_id": user_id, "type": type_, "title": title, "message": message}
    if action_url is not None:
        if not rules.is_url(action_url):
            _refuse("action_url", f"expected an http(s) URL or a path (/...), at most {rules.URL_MAX} characters")
        body["action_url"] = action_url
    if data is not None:
        if not isinstance(data, Mapping):
            _refuse("data", "expected a JSON object (a dict)")
        body["data"] = dict(data)
    if category is not None:
        if not rules.is_category(category):
            _refuse("category", f"expected 1-64 of [a-z0-9_.-], got {category!r}")
        body["category"] = category
    key = _idempotency_key(idempotency_key)
    if key is not None:
        body["idempotency_key"] = key
    actions = list(actions)
    if actions:
        body["actions"] = _actions(actions)
    tags = list(tags)
    if tags:
        if len(tags) > rules.TAGS_MAX:
            _refuse("tags", f"at most {rules.TAGS_MAX} tags, got {len(tags)}")
        for tag in tags:
            if not rules.is_tag(tag):
                _refuse("tags", f"a tag is 1-64 of [A-Za-z0-9_.:-], got {tag!r}")
        body["tags"] = list(dict.fromkeys(tags))  # repeats dropped, as the service does
    problem = rules.representable_problem(body)
    if problem is not None:
        raise Unrepresentable(problem, local=True)
    try:
        return encode(body)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"data cannot be encoded as JSON: {exc}", local=True) from None


def _actions(actions: list[Action]) -> list[dict[str, Any]]:
    if len(actions) > rules.ACTIONS_MAX:
        _refuse("actions", f"at most {rules.ACTIONS_MAX} actions, got {len(actions)}")
    checked: list[dict[str, Any]] = []
    for n, action in enumerate(actions):
        where = f"actions[{n}]"
        if not isinstance(action, Mapping):
            _refuse(where, 'expected {"id", "label", "url"?}')
        unknown = set(action) - {"id", "label", "url"}
        if unknown:
            _refuse(where, f"unknown fields {sorted(unknown)}: an action has id, label and url")
        if not rules.is_action_id(action.get("id")):
            _refuse(f"{where}.id", f"expected 1-64 of [A-Za-z0-9_.:-], got {action.get('id')!r}")
        _text(f"{where}.label", action.get("label"), 1, rules.ACTION_LABEL_MAX)
        url = action.get("url")
        if url is not None and not rules.is_url(url):
            _refuse(f"{where}.url", f"expected an http(s) URL or a path (/...), at most {rules.URL_MAX} characters")
        checked.append(dict(action))
    if len({action["id"] for action in checked}) != len(checked):
        _refuse("actions", "action ids must be unique")
    return checked


def _text(field: str, value: object, least: int, most: int) -> None:
    if not isinstance(value, str):
        _refuse(field, "expected a string")
    elif not least <= len(value) <= most:
        _refuse(field, f"expected {least}-{most} characters, got {len(value)}")


def _refuse(field: str, what: str) -> NoReturn:
    raise InvalidRequest(f"{field}: {what}", local=True)


# --- the typed helpers every publisher has ----------------------------------------------------

R = TypeVar("R")


class TypedHelpers(Generic[R]):
    """`progress`, `job_status` and `alert` over a publisher's own `publish` (which answers R: the
    id, or an awaitable of it)."""

    tenant: str

    def publish(self, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None, traceparent: str | None = None) -> R:
        raise NotImplementedError

    def progress(self, analysis_id: str, progress: float, *, idempotency_key: str | None = None, **extra: Any) -> R:
        """`analysis.progress` on `analysis:<analysis_id>` (0-100; never lower than the last one: 409)."""
        return self.publish(*progress_event(analysis_id, progress, **extra), idempotency_key=idempotency_key)

    def job_status(self, job_id: str, status: JobStatus, *, idempotency_key: str | None = None, **extra: Any) -> R:
        """`refactoring.status` on `job:<job_id>` (forward only, never out of a final state: 409)."""
        return self.publish(*job_status_event(job_id, status, **extra), idempotency_key=idempotency_key)

    def alert(self, severity: Severity, message: str, *, idempotency_key: str | None = None, **extra: Any) -> R:
        """`system.alert` on `tenant:<tenant>`: every connection of the tenant receives it."""
        return self.publish(*alert_event(self.tenant, severity, message, **extra), idempotency_key=idempotency_key)
