"""Who is viewing a channel, asked by a user: the same grant as subscribing, on the presence route
and the WebSocket `presence` op alike."""

from __future__ import annotations

from app.auth import Principal
from app.channels import Authorizer, check_channel
from app.errors import NotFound
from app.presence.base import Viewer
from app.presence.tracker import PresenceTracker
from app.rules import namespace


async def viewers(tracker: PresenceTracker, authorizer: Authorizer, principal: Principal, channel: str) -> list[Viewer]:
    """The channel's viewers of the principal's tenant; 403 without a grant for the channel, 404
    on a namespace presence does not track."""
    check_channel(channel)
    await authorizer.check(principal, channel)
    if not tracker.tracks(channel):
        raise NotFound(f"presence is not tracked on {namespace(channel)}: channels", channel=channel)
    return await tracker.presence.viewers(principal.tenant, channel)
