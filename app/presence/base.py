"""Who is viewing a channel, across processes.

Each connection is a member `<user>|<connection id>` of its channel with an expiry that its
process refreshes by heartbeat. A user is present while any of its connections is; the first
connection's join and the last one's leave (or expiry, when its process died) are the moments
`presence.join` / `presence.leave` are published. Every change answers whether it was such a
moment atomically, so exactly one process publishes each join and leave.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

Member = tuple[str, str, str, str]  # (tenant, channel, user, connection)
Change = tuple[bool, Member]  # (True: join / False: leave, who)


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: str
    connections: int
    since: int  # ms since the epoch of the user's oldest live connection


class Presence(ABC):
    @abstractmethod
    async def join(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        """Add a connection; True when it is the user's first (a join to announce)."""

    @abstractmethod
    async def leave(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        """Remove a connection; True when it was the user's last (a leave to announce)."""

    async def apply(self, changes: list[Change]) -> list[bool]:
        """Joins and leaves in this order, each answering as join/leave do. An engine overrides it
        to make them in one round trip (the tracker sends every change of a moment together)."""
        return [await (self.join if joining else self.leave)(tenant, channel, user, connection)
                for joining, (tenant, channel, user, connection) in changes]

    @abstractmethod
    async def heartbeat(self, members: list[Member]) -> None:
        """Keep these (tenant, channel, user, connection) alive for another expiry period."""

    @abstractmethod
    async def expire(self) -> list[tuple[str, str, str]]:
        """Drop connections whose heartbeat stopped; returns (tenant, channel, user) that left."""

    @abstractmethod
    async def viewers(self, tenant: str, channel: str) -> list[Viewer]: ...


def member(user: str, connection: str) -> str:
    return f"{user}|{connection}"


def group(members: list[tuple[str, int]]) -> list[Viewer]:
    """(member, since) pairs to one Viewer per user, oldest first."""
    users: dict[str, list[int]] = {}
    for name, since in members:
        users.setdefault(name.rsplit("|", 1)[0], []).append(since)
    viewers = [Viewer(user, len(times), min(times)) for user, times in users.items()]
    return sorted(viewers, key=lambda v: (v.since, v.user_id))
