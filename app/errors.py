"""Named errors. Each carries its HTTP status and wire code, mapped once in app.main and once
per socket transport (error frames), so every route and transport speaks the same codes."""

from __future__ import annotations

import math


class ServiceError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, channel: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.channel = channel
        # seconds after which trying again may succeed: HTTP Retry-After, and `retry_after` in bodies and frames
        self.retry_after = None if retry_after is None else math.ceil(retry_after * 1000) / 1000

    def body(self) -> dict[str, str | float]:
        body: dict[str, str | float] = {"code": self.code, "message": self.message}
        if self.channel is not None:
            body["channel"] = self.channel
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class TokenExpired(Unauthorized):
    code = "token_expired"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class BadChannel(ServiceError):
    status, code = 400, "bad_channel"


class BadCursor(ServiceError):
    status, code = 400, "bad_cursor"


class InvalidEvent(ServiceError):
    status, code = 422, "invalid_event"


class EventTooLarge(ServiceError):
    status, code = 413, "event_too_large"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class Unavailable(ServiceError):
    """A part the request needs is unreachable (the database; the event log engine): 503."""

    status, code = 503, "unavailable"


class Busy(ServiceError):
    """The event log engine is reachable but this request could not be served in time: every
    connection of the process's Redis pool stayed busy (REDIS_POOL_TIMEOUT), or Redis did not
    answer within REDIS_SOCKET_TIMEOUT. 503 + Retry-After; on WebSocket an error frame, then close
    1013 (Try Again Later). Not `unavailable`: nothing is down, there is too much to do."""

    status, code = 503, "busy"


class InternalError(ServiceError):
    """A bug (logged with its traceback); on WebSocket an error frame, then close 1011."""

    status, code = 500, "internal_error"


class Unprocessable(ServiceError):
    status, code = 422, "invalid_request"


class Unrepresentable(Unprocessable):
    """JSON that parses but that the service cannot store or encode exactly as sent (app.faithful):
    an integer beyond 64 bits, a number that is not finite, a lone surrogate or a NUL character in
    a string or a key, nesting deeper than 32. 422 on every route; on WebSocket an error frame (the
    connection stays); an ingest entry is kept aside as malformed. The message names the JSON path."""

    code = "unrepresentable_json"


class UnrepresentableParameter(Unrepresentable):
    """A query or path parameter with a NUL character (or a lone surrogate): no database can
    compare or store it. 422, like the JSON case, on every route."""

    code = "unrepresentable_parameter"


class CriticalCategory(Unprocessable):
    code = "critical_category"


class EndpointNotAllowed(Unprocessable):
    code = "endpoint_not_allowed"


class InvalidSubscription(Unprocessable):
    code = "invalid_subscription"


# --- operator-set limits (app.limits); each refusal is counted in realtime_limit_hits_total ---


class TooManyConnections(ServiceError):
    """MAX_CONNECTIONS reached in this process: 503 + Retry-After (another process may have room;
    on WebSocket an error frame, then close 1013 Try Again Later)."""

    status, code = 503, "too_many_connections"


class TooManySubscriptions(ServiceError):
    """MAX_SUBSCRIPTIONS reached on one connection: 422, not 429, because waiting does not help;
    the client must ask for fewer channels (WebSocket: an error frame, the connection stays)."""

    status, code = 422, "too_many_subscriptions"


class RateLimited(ServiceError):
    """A token bucket is empty (PUBLISH_PER_SECOND per token; WS_MESSAGES_PER_SECOND per socket):
    429 + Retry-After."""

    status, code = 429, "rate_limited"
