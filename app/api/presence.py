"""Who is viewing a channel right now (tenant-scoped like the channel itself)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app.auth import Principal
from app.channels import check_channel
from app.deps import Services, ServicesDep, StreamDep
from app.errors import NotFound
from app.rules import iso_ms, namespace

router = APIRouter(tags=["presence"])


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


async def presence_of(services: Services, principal: Principal, channel: str) -> PresenceResponse:
    """Shared by this route and the WebSocket `presence` op: same grant as subscribing."""
    check_channel(channel)
    await services.authorizer.check(principal, channel)
    if not services.presence.tracks(channel):
        raise NotFound(f"presence is not tracked on {namespace(channel)}: channels", channel=channel)
    viewers = await services.presence.presence.viewers(principal.tenant, channel)
    return PresenceResponse(channel=channel, users=[
        PresentUser(user_id=v.user_id, connections=v.connections, since=iso_ms(v.since)) for v in viewers])


@router.get("/v1/presence/{channel}", response_model=PresenceResponse, summary="Users viewing a channel",
            responses={400: {"description": "Bad channel name."}, 401: {"description": "Missing or invalid token."},
                       403: {"description": "No grant for the channel."},
                       404: {"description": "Presence is not tracked on this namespace."}})
async def get_presence(channel: str, services: ServicesDep, principal: StreamDep) -> PresenceResponse:
    return await presence_of(services, principal, channel)
