"""Who is viewing a channel right now (tenant-scoped like the channel itself)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict

from app.deps import ServicesDep, StreamDep
from app.presence import query
from app.presence.base import Viewer
from app.rules import CHANNEL_PATTERN, iso_ms

router = APIRouter(tags=["presence"])
# the pattern is documented, and checked by the route itself (a 400 bad_channel, as everywhere)
Channel = Annotated[str, Path(description="`namespace:id`", json_schema_extra={"pattern": CHANNEL_PATTERN.pattern})]


class PresentUser(BaseModel):
    user_id: str
    connections: int
    since: str


class PresenceResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "channel": "repository:repo_456",
        "users": [{"user_id": "user_789", "connections": 2, "since": "2026-11-28T06:00:00.000Z"}]}]})
    channel: str
    users: list[PresentUser]


def _response(channel: str, viewers: list[Viewer]) -> PresenceResponse:
    return PresenceResponse(channel=channel, users=[
        PresentUser(user_id=v.user_id, connections=v.connections, since=iso_ms(v.since)) for v in viewers])


@router.get("/v1/presence/{channel}", response_model=PresenceResponse, summary="Users viewing a channel",
            responses={400: {"description": "Bad channel name."}, 401: {"description": "Missing or invalid token."},
                       403: {"description": "No grant for the channel."},
                       404: {"description": "Presence is not tracked on this namespace."}})
async def get_presence(channel: Channel, services: ServicesDep, principal: StreamDep) -> PresenceResponse:
    return _response(channel, await query.viewers(services.presence, services.authorizer, principal, channel))
