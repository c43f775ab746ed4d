"""The channels one connection has joined: each one authorized, within MAX_SUBSCRIPTIONS, routed
to it by the hub, and (on the namespaces that track it) counted in presence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from app import metrics
from app.auth import Principal
from app.channels import Authorizer
from app.core.hub import Hub, Subscriber
from app.errors import TooManySubscriptions
from app.presence.tracker import PresenceTracker


@dataclass(frozen=True, slots=True)
class PresenceId:
    """How a connection counts in presence, chosen by its transport: by default a connection of its
    own that leaves when it closes; `sticky`, one id kept across requests that leaves by expiry
    alone (a long-polling client is one viewer across its many requests)."""

    connection: str
    sticky: bool = False

    @classmethod
    def fresh(cls) -> PresenceId:
        return cls(PresenceTracker.new_connection_id())


@dataclass(frozen=True, slots=True)
class Membership:
    """What admitting and routing a channel needs: the same for every connection of a process."""

    hub: Hub
    authorizer: Authorizer
    limit: int = 0  # MAX_SUBSCRIPTIONS; 0: unlimited
    presence: PresenceTracker | None = None


class Subscriptions:
    """The channel side of a session, in a class of its own so that it reads on its own: a base
    class of Session rather than a part object, because a process holds one per connection and an
    idle connection should cost one object, not two."""

    __slots__ = ("_connection", "_membership", "_sticky", "channels", "principal")

    def __init__(self, principal: Principal, membership: Membership, presence_id: PresenceId) -> None:
        self._membership = membership
        self._connection, self._sticky = presence_id.connection, presence_id.sticky  # unpacked: one object less each
        self.principal = principal  # replaced by a token refresh: new `channels` patterns apply from then
        self.channels: set[str] = set()

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def _subscriber(self) -> Subscriber:
        return cast("Subscriber", self)  # what the hub routes to: the Session this is a base of

    async def admit(self, channel: str) -> bool:
        """Authorize and route one channel to this connection; False if it was joined already.

        Over MAX_SUBSCRIPTIONS (the automatic user: and tenant: channels count) it raises
        TooManySubscriptions before asking the authorizer, on every transport alike."""
        if channel in self.channels:
            return False
        membership = self._membership
        if membership.limit and len(self.channels) >= membership.limit:
            metrics.LIMIT_HITS.labels(limit="subscriptions").inc()
            raise TooManySubscriptions(
                f"a connection holds at most {membership.limit} channels (user: and tenant: included); "
                "unsubscribe from one first", channel=channel)
        await membership.authorizer.check(self.principal, channel)
        membership.hub.add(self._subscriber(), channel)
        self.channels.add(channel)
        return True

    async def announce(self, channel: str) -> None:
        """Count the connection in the channel's presence (once admitted and positioned)."""
        presence = self._membership.presence
        if presence is not None and presence.tracks(channel):
            await presence.join(self.principal.tenant, channel, self.principal.user, self._connection)

    def leave(self, channel: str) -> bool:
        """Stop routing the channel here and leave its presence; False if it was not joined."""
        if channel not in self.channels:
            return False
        self.channels.discard(channel)
        membership = self._membership
        membership.hub.remove(self._subscriber(), channel)
        presence = membership.presence
        if presence is not None and presence.tracks(channel):
            member = (self.principal.tenant, channel, self.principal.user, self._connection)
            if self._sticky:
                presence.release(*member)
            else:
                presence.leave(*member)
        return True
