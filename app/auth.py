"""Who is calling: JWT verification with pinned algorithms, and one-time tickets.

The algorithm is chosen by configuration, never by the token: a token whose header names any
other algorithm fails before a key is even picked, and HMAC tokens are checked only against the
HMAC secret, so a public key can never be abused as an HMAC secret (algorithm confusion).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import jwt
import orjson

from app.errors import TokenExpired, Unauthorized
from app.keys import Keys
from app.rules import is_tenant, is_user
from app.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from jwt import PyJWK
    from jwt.algorithms import AllowedPublicKeys


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    tenant: str
    exp: float
    patterns: tuple[str, ...] = ()
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def can_publish(self) -> bool:
        return "publish" in self.scopes

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"user": self.user, "tenant": self.tenant, "exp": self.exp, "patterns": self.patterns, "scopes": sorted(self.scopes)}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Principal:
        d = orjson.loads(raw)
        return cls(d["user"], d["tenant"], d["exp"], tuple(d["patterns"]), frozenset(d["scopes"]))


_VERIFIED_TOKENS = 20_000  # tokens remembered per process
_VERIFIED_SECONDS = 60.0


class TokenVerifier:
    """Verifies bearer tokens, and remembers each verified token for up to a minute (never past its
    expiry): a browser re-sends the same token on every long-poll and every reconnect, and a
    reconnect storm is thousands of them at once; verifying (a JWKS token: a thread hop besides)
    is most of a set-up's CPU. A signing key removed from the JWKS stops being accepted within
    that minute."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithms = settings.algorithms
        self._hs_secret = settings.hs_secret() if any(a.startswith("HS") for a in self.algorithms) else None
        self._public_key = settings.jwt_public_key
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) if settings.jwt_jwks_url else None
        self._verified: dict[str, tuple[float, Principal]] = {}  # token -> (trusted until, principal), oldest first

    async def verify(self, token: str) -> Principal:
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[0]:
                return known[1]
            del self._verified[token]
        principal = await self._verify(token)
        if len(self._verified) >= _VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (min(now + _VERIFIED_SECONDS, principal.exp + self.settings.jwt_leeway_seconds), principal)
        return principal

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise Unauthorized(f"token algorithm {str(alg)[:16]!r} is not accepted")
        key = await self._key_for(alg, token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.settings.jwt_audience,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "sub", "tid"], "verify_aud": bool(self.settings.jwt_audience)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        return _principal(claims)

    async def _key_for(self, alg: str, token: str) -> AllowedPublicKeys | PyJWK | str | bytes:
        if alg.startswith("HS"):
            if not self._hs_secret:
                raise Unauthorized("HMAC tokens are not accepted")
            return self._hs_secret
        if self._public_key:
            return self._public_key
        if self._jwks is not None:
            try:
                return (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"no signing key for token: {exc}") from exc
        raise Unauthorized("no public key configured for asymmetric tokens")


def _principal(claims: dict) -> Principal:
    sub, tid = claims.get("sub"), claims.get("tid")
    if not is_user(sub):
        raise Unauthorized("claim 'sub' must be 1-128 of [A-Za-z0-9_.:@-]")
    if not is_tenant(tid):
        raise Unauthorized("claim 'tid' must be 1-128 of [A-Za-z0-9_.@-]")
    patterns = claims.get("channels", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise Unauthorized("claim 'channels' must be a list of strings")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise Unauthorized("claim 'scope' must be a space-separated string")
    return Principal(sub, tid, float(claims["exp"]), tuple(patterns), frozenset(scope.split()))


def mint_token(
    settings: Settings,
    *,
    user: str,
    tenant: str,
    ttl: int = 3600,
    channels: list[str] | None = None,
    scope: str | None = None,
) -> str:
    """A development/service HS token signed with the configured secret (CLI, tests, demo)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "tid": tenant, "iat": now, "exp": now + ttl}
    if channels:
        claims["channels"] = channels
    if scope:
        claims["scope"] = scope
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.hs_secret(), algorithm="HS256")


class TicketStore:
    """One-time tickets: a short-lived, single-use stand-in for a JWT in a URL.

    In Redis (shared by every process) when given the process's client, otherwise in this
    process's memory.
    """

    def __init__(self, ttl: int, redis: aioredis.Redis | None = None, keys: Keys | None = None) -> None:
        self.ttl = ttl
        self._redis = redis
        self._keys = keys or Keys()
        self._local: dict[str, tuple[bytes, float]] = {}

    async def issue(self, principal: Principal) -> str:
        ticket = secrets.token_urlsafe(32)
        if self._redis is not None:
            await self._redis.set(self._keys.ticket(ticket), principal.to_json(), ex=self.ttl)
        else:
            now = time.monotonic()
            self._local = {k: v for k, v in self._local.items() if v[1] > now}
            self._local[ticket] = (principal.to_json(), now + self.ttl)
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        if self._redis is not None:
            raw = cast(bytes | None, await self._redis.getdel(self._keys.ticket(ticket)))
        else:
            raw, expires = self._local.pop(ticket, (None, 0.0))
            raw = raw if expires > time.monotonic() else None
        if raw is None:
            raise Unauthorized("ticket is unknown, used or expired")
        principal = Principal.from_json(raw)
        if principal.exp < time.time():
            raise TokenExpired("the token behind this ticket has expired")
        return principal
