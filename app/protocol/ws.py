"""The WebSocket protocol of CONTRACT.md section 5, without I/O: the ops a client may send, the
frames the server writes, and the close codes. This module is the wire reference: the transport
dispatches on `CLIENT_OPS`, builds every control frame here, and the AsyncAPI document and the
README are tested against these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from app.channels import check_channel
from app.errors import BadChannel, ServiceError
from app.presence.base import Viewer
from app.rules import iso_ms


class CloseCode(IntEnum):
    """Every close code the server sends (meanings in CLOSE_CODES)."""

    POLICY_VIOLATION = 1008
    FRAME_TOO_LARGE = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    AUTHENTICATION = 4001
    SLOW_CONSUMER = 4008
    BAD_REQUEST = 4400


CLOSE_CODES: dict[CloseCode, str] = {
    CloseCode.AUTHENTICATION: "token missing, invalid or expired: reconnect with a fresh one",
    CloseCode.BAD_REQUEST: "bad request at connect (a bad cursor or channel list)",
    CloseCode.SLOW_CONSUMER: "slow consumer, more than MAX_BACKLOG events behind: resume with `since`",
    CloseCode.FRAME_TOO_LARGE: "a client frame over MAX_FRAME_BYTES",
    CloseCode.POLICY_VIOLATION: "client frames over WS_MESSAGES_PER_SECOND (persistently)",
    CloseCode.INTERNAL_ERROR: "the server failed this connection: reconnect with `since` after a backoff",
    CloseCode.SERVICE_RESTART: "the process is draining (sent by uvicorn at SIGTERM): reconnect, another process resumes you",
    CloseCode.TRY_AGAIN_LATER: "the process is at MAX_CONNECTIONS, or its event log engine is busy, slow or away "
                               "(a `busy` / `unavailable` error frame with `retry_after` first): try again later",
}
"""What each close code means for the client."""

CLIENT_OPS: dict[str, str] = {
    "subscribe": '{"op":"subscribe","channel":C}: join a channel (answered with `subscribed`)',
    "unsubscribe": '{"op":"unsubscribe","channel":C}: leave a channel (answered with `unsubscribed`)',
    "ping": '{"op":"ping"}: answered with `pong`',
    "refresh": '{"op":"refresh","token":T}: a fresh token for the same sub and tid (answered with `refreshed`)',
    "ack": '{"op":"ack","id":I}: move the stored cursor of this client_id to I (never past what was delivered)',
    "presence": '{"op":"presence","channel":C}: who is viewing C (answered with `presence`)',
}
"""The ops a client may send, each with its frame and meaning."""

SERVER_OPS: dict[str, str] = {
    "subscribed": '{"op":"subscribed","channel":C}',
    "unsubscribed": '{"op":"unsubscribed","channel":C}',
    "pong": '{"op":"pong"}',
    "refreshed": '{"op":"refreshed"}',
    "presence": '{"op":"presence","channel":C,"users":[{"user_id","connections","since"}]}',
    "reset": '{"op":"reset"}: history was lost; refetch what you show, then live events continue',
    "error": '{"op":"error","code","message"[,"channel"][,"retry_after"]}',
}
"""The control frames the server writes besides event envelopes."""


class BadFrame(ServiceError):
    code = "bad_frame"


class UnknownOp(ServiceError):
    code = "unknown_op"


def control(op: str, **fields: Any) -> str:
    """A server control frame: `{"op": op, **fields}` as JSON text."""
    if op not in SERVER_OPS:
        raise ValueError(f"not a server op: {op!r}")
    return orjson.dumps({"op": op, **fields}).decode()


PONG = control("pong")
RESET = control("reset")
REFRESHED = control("refreshed")


def error(exc: ServiceError) -> str:
    return control("error", **exc.body())


def subscribed(channel: str) -> str:
    return control("subscribed", channel=channel)


def unsubscribed(channel: str) -> str:
    return control("unsubscribed", channel=channel)


def presence(channel: str, viewers: list[Viewer]) -> str:
    """The same body as GET /v1/presence/{channel}."""
    users = [{"user_id": v.user_id, "connections": v.connections, "since": iso_ms(v.since)} for v in viewers]
    return control("presence", channel=channel, users=users)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """One parsed client frame: its op (not yet known to be handled) and its fields."""

    op: str
    fields: dict[str, Any]

    def channel(self) -> str:
        channel = self.fields.get("channel")
        if not isinstance(channel, str):
            raise BadChannel('"channel" must be a string')
        return check_channel(channel)

    def token(self) -> str:
        token = self.fields.get("token")
        if not isinstance(token, str):
            raise BadFrame('"token" must be a JWT string')
        return token

    def cursor(self) -> str:
        cursor = self.fields.get("id")
        if not isinstance(cursor, str):
            raise BadFrame('"id" must be a cursor string')
        return cursor


def parse(raw: str | bytes) -> ClientFrame:
    """A client frame must be a JSON object with a string `op`; anything else is `bad_frame`."""
    try:
        frame: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadFrame("frames must be JSON objects") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
        raise BadFrame('frames must be JSON objects with an "op"')
    op = frame.pop("op")
    if op not in CLIENT_OPS:
        raise UnknownOp(f"unknown op {op[:32]!r}")
    return ClientFrame(op, frame)
