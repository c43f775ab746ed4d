"""Named errors. Each carries its HTTP status and wire code, mapped once in app.main and once
per socket transport (error frames), so every route and transport speaks the same codes."""

from __future__ import annotations


class ServiceError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, channel: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.channel = channel

    def body(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.channel is not None:
            body["channel"] = self.channel
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
    status, code = 503, "unavailable"


class Unprocessable(ServiceError):
    status, code = 422, "invalid_request"


class CriticalCategory(Unprocessable):
    code = "critical_category"


class EndpointNotAllowed(Unprocessable):
    code = "endpoint_not_allowed"


class InvalidSubscription(Unprocessable):
    code = "invalid_subscription"
