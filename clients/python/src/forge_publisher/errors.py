"""Named errors: one class per error code of the service, raised for the service's answer over HTTP
(`{"code", "message", "channel"?, "retry_after"?}`) and, with `local=True`, for what this package
refuses before sending because the service would refuse it.

    try:
        events.progress("a1", 140)
    except InvalidEvent as exc:      # exc.local: caught here; exc.status: 422, what the service answers
        ...

The refusals of input (`BadChannel`, `InvalidEvent`, `EventTooLarge`, `InvalidRequest` and its
`Unrepresentable`) are also `ValueError`s. `retryable` says whether the same call may succeed later
(429, 503: nothing was published); `retry_after` how many seconds to wait, when the service said.
A network failure is the client library's own error (httpx's, redis-py's), not one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class PublishError(Exception):
    """Everything this package raises about a publish. An answer whose code it does not know is one
    of these with that `code` and `status`."""

    status: int | None = None  # the HTTP status the service answers (or would answer: `local`)
    code: str = "error"  # the service's error code
    retryable_statuses: ClassVar[frozenset[int]] = frozenset({429, 503})

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, channel: str | None = None,
                 retry_after: float | None = None, local: bool = False, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.channel = channel  # the channel the error is about, when the service named one
        self.retry_after = retry_after  # seconds to wait before trying again, when the service said
        self.local = local  # True: refused by this package; nothing was sent
        self.body = dict(body) if body is not None else None  # the service's whole error body (e.g. `errors` of a 422)

    @property
    def retryable(self) -> bool:
        return not self.local and self.status in self.retryable_statuses

    def __repr__(self) -> str:
        where = " (local)" if self.local else ""
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, status={self.status}){where}"


class BadRequest(PublishError):
    status, code = 400, "bad_request"


class BadChannel(BadRequest, ValueError):
    """A channel name or an event type the contract does not allow."""

    status, code = 400, "bad_channel"


class Unauthorized(PublishError):
    """No token, a bad one, or one the service does not accept (its secret, audience, algorithm)."""

    status, code = 401, "unauthorized"


class TokenExpired(Unauthorized):
    code = "token_expired"


class Forbidden(PublishError):
    """A valid token that may not do this: publishing needs scope `publish`."""

    status, code = 403, "forbidden"


class NotFound(PublishError):
    status, code = 404, "not_found"


class Conflict(PublishError):
    """A typed event that would move backwards: progress lower than the channel's last accepted
    value, a job status out of order or out of a final state (`channel` names the channel)."""

    status, code = 409, "conflict"


class EventTooLarge(PublishError, ValueError):
    """Larger than the service's MAX_EVENT_BYTES (the default limit is checked locally)."""

    status, code = 413, "event_too_large"


class InvalidEvent(PublishError, ValueError):
    """A tenant the contract does not allow, data that is not a JSON object, or a typed seed event
    whose data breaks its rule (progress outside 0-100, an unknown status or severity)."""

    status, code = 422, "invalid_event"


class InvalidRequest(PublishError, ValueError):
    """A body that does not match the route's schema (a notification's title too long, too many
    tags...); the service's `errors` list is in `body`."""

    status, code = 422, "invalid_request"


class Unrepresentable(InvalidRequest):
    """JSON the service cannot store or encode as sent: an integer beyond 64 bits, a number that is
    not finite, a NUL or a lone surrogate in a string or key, nesting deeper than 32 (the message
    names the JSON path)."""

    code = "unrepresentable_json"


class RateLimited(PublishError):
    """More publishes per second with this token than the service's PUBLISH_PER_SECOND allows."""

    status, code = 429, "rate_limited"


class InternalError(PublishError):
    status, code = 500, "internal_error"


class Unavailable(PublishError):
    """A part the service needs (its Redis, its database) is unreachable; nothing was published."""

    status, code = 503, "unavailable"


class Busy(Unavailable):
    """The service could not serve the request in time (its Redis pool or Redis itself busy);
    nothing was published."""

    code = "busy"


ERRORS: Mapping[str, type[PublishError]] = {cls.code: cls for cls in (
    BadRequest, BadChannel, Unauthorized, TokenExpired, Forbidden, NotFound, Conflict, EventTooLarge, InvalidEvent,
    InvalidRequest, Unrepresentable, RateLimited, InternalError, Unavailable, Busy)}
# an answer without a code of ours (a proxy's 502 page, say): named by its status where one fits
_BY_STATUS: Mapping[int, type[PublishError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: EventTooLarge,
    422: InvalidRequest, 429: RateLimited, 500: InternalError, 503: Unavailable}


def error_from_answer(status: int, body: Any, retry_after_header: str | None = None) -> PublishError:
    """The named error for an HTTP answer of the service: by its `code`, else by its status."""
    fields: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    code = fields.get("code")
    cls = ERRORS.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, PublishError)
    message = fields.get("message")
    if not isinstance(message, str):
        message = f"the service answered {status}" + (f": {body[:200]}" if isinstance(body, str) and body else "")
    retry_after = fields.get("retry_after")
    if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
        retry_after = _seconds(retry_after_header)
    channel = fields.get("channel")
    return cls(message, code=code if isinstance(code, str) else None, status=status,
               channel=channel if isinstance(channel, str) else None, retry_after=retry_after,
               body=fields if fields else None)


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header is not None else None
    except ValueError:  # an HTTP date: not something this service sends
        return None
