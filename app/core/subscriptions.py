"""The channels one connection has joined: each one authorized, within MAX_SUBSCRIPTIONS, routed
to it by the hub, and (on the namespaces that track it) counted in presence."""

from __future__ import annotations

from dataclasses import dataclass

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


class Subscriptions:
    __slots__ = ("_authorizer", "_connection", "_hub", "_limit", "_presence", "_sticky", "_subscriber", "channels",
                 "principal")

    def __init__(self, subscriber: Subscriber, principal: Principal, *, hub: Hub, authorizer: Authorizer,
                 limit: int, presence: PresenceTracker | None, presence_id: PresenceId) -> None:
        self._subscriber, self._hub, self._authorizer = subscriber, hub, authorizer
        self._limit = limit  # MAX_SUBSCRIPTIONS; 0: unlimited
        self._presence = presence
        self._connection, self._sticky = presence_id.connection, presence_id.sticky  # unpacked: one object less each
        self.principal = principal  # replaced by a token refresh: new `channels` patterns apply from then
        self.channels: set[str] = set()

    async def admit(self, channel: str) -> bool:
        """Authorize and route one channel to the subscriber; False if it was joined already.

        Over MAX_SUBSCRIPTIONS (the automatic user: and tenant: channels count) it raises
        TooManySubscriptions before asking the authorizer, on every transport alike."""
        if channel in self.channels:
            return False
        if self._limit and len(self.channels) >= self._limit:
            metrics.LIMIT_HITS.labels(limit="subscriptions").inc()
            raise TooManySubscriptions(
                f"a connection holds at most {self._limit} channels (user: and tenant: included); "
                "unsubscribe from one first", channel=channel)
        await self._authorizer.check(self.principal, channel)
        self._hub.add(self._subscriber, channel)
        self.channels.add(channel)
        return True

    async def announce(self, channel: str) -> None:
        """Count the connection in the channel's presence (once admitted and positioned)."""
        if self._presence is not None and self._presence.tracks(channel):
            await self._presence.join(self.principal.tenant, channel, self.principal.user, self._connection)

    def leave(self, channel: str) -> bool:
        """Stop routing the channel here and leave its presence; False if it was not joined."""
        if channel not in self.channels:
            return False
        self.channels.discard(channel)
        self._hub.remove(self._subscriber, channel)
        if self._presence is not None and self._presence.tracks(channel):
            member = (self.principal.tenant, channel, self.principal.user, self._connection)
            if self._sticky:
                self._presence.release(*member)
            else:
                self._presence.leave(*member)
        return True
