"""JWT_JWKS_URL: RS256 tokens checked against keys fetched from a JWKS document, served here by a
real HTTP server (a thread of this process) and signed with private keys this module makes.

app/auth.py pins what it accepts: the algorithms of JWT_ALGORITHMS (never the token's choice),
the key chosen by the token's `kid` among the document's keys, JWT_AUDIENCE when set, and HMAC
tokens only against the HMAC secret (a public key is never an HMAC secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from app.auth import TokenVerifier
from app.errors import TokenExpired, Unauthorized
from app.settings import Settings
from tests.conftest import TEST_SECRET, LiveServer, free_port
from tests.live_support import WAIT, WS, Closed, LocalHTTPServer, Request

KID = "key-2026-01"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    """An identity provider: its signing key (served in the JWKS under KID) and an impostor's key."""

    def __init__(self) -> None:
        self.key = _rsa()
        self.impostor = _rsa()
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwks = {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}
        self.server = LocalHTTPServer(self._answer)

    def _answer(self, request: Request) -> tuple[int, Any]:
        if request.path != "/.well-known/jwks.json":
            return 404, {"error": "not found"}
        return 200, self.jwks

    @property
    def jwks_url(self) -> str:
        return f"{self.server.url}/.well-known/jwks.json"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_der(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def mint(self, *, key: rsa.RSAPrivateKey | None = None, alg: str = "RS256", kid: str | None = KID,
             **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "u1", "tid": "t1", "iat": now, "exp": now + 600, **claims}
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(body, key or self.key, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    with issuer.server:
        yield issuer


def verifier(issuer: Issuer, tmp_path: Path, **settings: Any) -> TokenVerifier:
    values: dict[str, Any] = {"jwt_algorithms": "RS256", "jwt_jwks_url": issuer.jwks_url, "data_dir": tmp_path}
    values.update(settings)
    return TokenVerifier(Settings(**values))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with(secret: bytes, kid: str | None = KID) -> str:
    """An HS256 token whose HMAC secret is `secret` (built by hand: PyJWT itself refuses public keys)."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    claims = {"sub": "u1", "tid": "t1", "exp": now + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


# --------------------------------------------------------------------------------------------


async def test_a_token_signed_with_the_published_key_is_accepted(issuer: Issuer, tmp_path: Path) -> None:
    before = len(issuer.server.calls())
    principal = await verifier(issuer, tmp_path).verify(issuer.mint(sub="alice", tid="acme", channels=["repository:*"]))
    assert (principal.user, principal.tenant, principal.patterns) == ("alice", "acme", ("repository:*",))
    assert len(issuer.server.calls()) > before  # the key came from the JWKS document


async def test_a_token_signed_with_another_key_under_the_published_kid_is_refused(issuer: Issuer, tmp_path: Path) -> None:
    with pytest.raises(Unauthorized):
        await verifier(issuer, tmp_path).verify(issuer.mint(key=issuer.impostor))


@pytest.mark.parametrize("kid", ["someone-elses-key", None], ids=["unknown-kid", "no-kid"])
async def test_a_kid_the_document_does_not_publish_is_refused(issuer: Issuer, tmp_path: Path, kid: str | None) -> None:
    """Signed with the real key even, a token must name a published kid: the kid picks the key."""
    with pytest.raises(Unauthorized, match="no signing key"):
        await verifier(issuer, tmp_path).verify(issuer.mint(kid=kid))


async def test_only_the_configured_algorithms_are_accepted(issuer: Issuer, tmp_path: Path) -> None:
    check = verifier(issuer, tmp_path)  # JWT_ALGORITHMS=RS256
    with pytest.raises(Unauthorized, match="not accepted"):  # the right key, another RSA algorithm
        await check.verify(issuer.mint(alg="RS512"))
    with pytest.raises(Unauthorized, match="not accepted"):  # HMAC is not configured at all
        await check.verify(hs256_signed_with(issuer.public_pem()))
    header = _b64(b'{"alg":"none","typ":"JWT","kid":"' + KID.encode() + b'"}')
    with pytest.raises(Unauthorized, match="not accepted"):
        await check.verify(f"{header}.{_b64(json.dumps({'sub': 'u1', 'tid': 't1', 'exp': int(time.time()) + 600}).encode())}.")


async def test_the_public_key_is_never_an_hmac_secret(issuer: Issuer, tmp_path: Path) -> None:
    """Algorithm confusion: with HS256 and RS256 both accepted, an HS256 token whose HMAC secret is
    the published public key (in any encoding an attacker can derive from the JWKS) is refused."""
    check = verifier(issuer, tmp_path, jwt_algorithms="HS256,RS256", jwt_secret=TEST_SECRET)
    assert (await check.verify(issuer.mint())).user == "u1"  # RS256 from the JWKS works
    assert (await check.verify(jwt.encode({"sub": "u1", "tid": "t1", "exp": int(time.time()) + 600},
                                          TEST_SECRET, algorithm="HS256"))).user == "u1"  # and so does the HMAC secret
    jwk = issuer.jwks["keys"][0]
    modulus = issuer.key.public_key().public_numbers().n
    raw_modulus = modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")
    for secret in (issuer.public_pem(), issuer.public_der(), json.dumps(jwk).encode(), jwk["n"].encode(), raw_modulus):
        for kid in (KID, None):
            with pytest.raises(Unauthorized):
                await check.verify(hs256_signed_with(secret, kid))


async def test_audience_is_pinned_when_configured(issuer: Issuer, tmp_path: Path) -> None:
    check = verifier(issuer, tmp_path, jwt_audience="forge-realtime")
    assert (await check.verify(issuer.mint(aud="forge-realtime"))).user == "u1"
    with pytest.raises(Unauthorized):
        await check.verify(issuer.mint(aud="another-service"))
    with pytest.raises(Unauthorized):
        await check.verify(issuer.mint())  # no audience at all


async def test_expired_and_incomplete_tokens_are_refused(issuer: Issuer, tmp_path: Path) -> None:
    check = verifier(issuer, tmp_path)
    with pytest.raises(TokenExpired):
        await check.verify(issuer.mint(exp=int(time.time()) - 3600))
    token = issuer.mint()
    header, _, signature = token.split(".")
    with pytest.raises(Unauthorized):  # claims changed after signing
        forged = _b64(json.dumps({"sub": "u1", "tid": "other-tenant", "exp": int(time.time()) + 600}).encode())
        await check.verify(f"{header}.{forged}.{signature}")
    claims = {"sub": "u1", "exp": int(time.time()) + 600}  # no tid
    with pytest.raises(Unauthorized):
        await check.verify(jwt.encode(claims, issuer.key, algorithm="RS256", headers={"kid": KID}))


async def test_a_live_server_with_jwt_jwks_url(issuer: Issuer, tmp_path: Path) -> None:
    """The settings by their environment names, through HTTP and a WebSocket of `python -m app serve`."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(tmp_path), "JWT_ALGORITHMS": "RS256", "JWT_JWKS_URL": issuer.jwks_url,
                "JWT_AUDIENCE": "forge-realtime"})
    server = LiveServer(env, free_port()).start()
    try:
        good = issuer.mint(sub="alice", aud="forge-realtime")
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            async def poll(tok: str) -> httpx.Response:
                return await http.get(f"{server.url}/v1/poll", params={"timeout": 0}, headers={"Authorization": f"Bearer {tok}"})

            assert (await poll(good)).status_code == 200
            for bad in (issuer.mint(key=issuer.impostor, aud="forge-realtime"),  # wrong key
                        issuer.mint(kid="rotated-away", aud="forge-realtime"),  # unknown kid
                        issuer.mint(aud="another-service"),  # wrong audience
                        hs256_signed_with(issuer.public_pem())):  # algorithm confusion
                response = await poll(bad)
                assert response.status_code == 401, response.text
                assert response.json()["code"] == "unauthorized"

        async with await WS.connect(server.ws_url, good) as ws:
            await ws.subscribed({"user:alice", "tenant:t1"})
        refused = await WS.connect(server.ws_url, issuer.mint(key=issuer.impostor, aud="forge-realtime"))
        try:
            frame = await refused.next()
            assert frame.get("op") == "error" and frame.get("code") == "unauthorized", frame
            closed = await refused.next()
            assert isinstance(closed, Closed) and closed.code == 4001, closed
        finally:
            await refused.aclose()
    finally:
        server.stop()
