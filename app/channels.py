"""Channel names and who may subscribe to them.

Channels are always looked up as (tenant, channel): the tenant comes from the token, never from
the client, so `repository:r1` of two tenants can never meet.
"""

from __future__ import annotations

import logging
import time
from fnmatch import fnmatchcase

import httpx

from app.auth import Principal
from app.errors import BadChannel, Forbidden
from app.rules import TENANT_NAMESPACE, USER_NAMESPACE, is_channel, is_type, split_channel, tenant_channel, user_channel

logger = logging.getLogger(__name__)

MAX_CHANNELS_PER_REQUEST = 64


def check_channel(name: str) -> str:
    if not is_channel(name):
        raise BadChannel(f"invalid channel name {str(name)[:140]!r}: expected namespace:id", channel=str(name)[:140])
    return name


def check_type(name: str) -> str:
    if not is_type(name):
        raise BadChannel(f"invalid event type {str(name)[:80]!r}: expected 1-64 of [A-Za-z0-9_.:-]")
    return name


def parse_channels(value: str | None) -> list[str]:
    """The `channels=a,b` query parameter, validated and de-duplicated in order."""
    if not value:
        return []
    names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if len(names) > MAX_CHANNELS_PER_REQUEST:
        raise BadChannel(f"at most {MAX_CHANNELS_PER_REQUEST} channels per request")
    return [check_channel(name) for name in names]


def joined_channels(principal: Principal) -> list[str]:
    """Every connection joins its user's and its tenant's channel."""
    return [user_channel(principal.user), tenant_channel(principal.tenant)]


class Authorizer:
    """Decides subscriptions: own user/tenant channels, the token's `channels` patterns, then the
    optional AUTHZ_URL hook (answers cached, failures deny)."""

    def __init__(self, hook_url: str | None, *, cache_seconds: float, timeout: float) -> None:
        self._hook_url = hook_url
        self._cache_seconds = cache_seconds
        self._http = httpx.AsyncClient(timeout=timeout) if hook_url else None
        self._cache: dict[tuple[str, str, str], tuple[bool, float]] = {}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def check(self, principal: Principal, channel: str) -> None:
        check_channel(channel)
        namespace, ident = split_channel(channel)
        if namespace == USER_NAMESPACE:
            if ident != principal.user:
                raise Forbidden("a user channel belongs to its user alone", channel=channel)
            return
        if namespace == TENANT_NAMESPACE:
            if ident != principal.tenant:
                raise Forbidden("a tenant channel belongs to its tenant alone", channel=channel)
            return
        if any(fnmatchcase(channel, pattern) for pattern in principal.patterns):
            return
        if not await self._ask_hook(principal, channel):
            raise Forbidden("not allowed to subscribe to this channel", channel=channel)

    async def _ask_hook(self, principal: Principal, channel: str) -> bool:
        if self._http is None or self._hook_url is None:
            return False
        key = (principal.tenant, principal.user, channel)
        cached = self._cache.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            response = await self._http.post(
                self._hook_url, json={"tenant": principal.tenant, "user_id": principal.user, "channel": channel}
            )
            answer = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # a timeout says nothing
            logger.warning("authorization hook failed, denying %s: %s", channel, reason)
            return False  # not cached: the next attempt asks again
        if not isinstance(answer, dict):  # a failing or confused hook is no decision: deny, ask again next time
            logger.warning("authorization hook answered %s%s, denying %s", response.status_code,
                           "" if response.status_code != 200 else " without a JSON object", channel)
            return False
        allowed = answer.get("allow") is True
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = (allowed, time.monotonic() + self._cache_seconds)
        return allowed
