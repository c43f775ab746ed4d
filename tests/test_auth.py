"""Token checks are pinned: algorithm, signature, expiry, audience and claims."""

from __future__ import annotations

import base64
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth import Principal, TicketStore, TokenVerifier
from app.errors import TokenExpired, Unauthorized
from app.keys import Keys
from app.settings import Settings
from tests.conftest import TEST_SECRET


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "u1", "tid": "t1", "iat": now, "exp": now + 600, **extra}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def hs_verifier(tmp_path) -> TokenVerifier:
    return TokenVerifier(Settings(jwt_secret=TEST_SECRET, data_dir=tmp_path))


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


async def test_valid_token_gives_principal(hs_verifier: TokenVerifier) -> None:
    tok = jwt.encode(_claims(channels=["repository:*"], scope="publish other"), TEST_SECRET, algorithm="HS256")
    principal = await hs_verifier.verify(tok)
    assert principal.user == "u1" and principal.tenant == "t1"
    assert principal.patterns == ("repository:*",)
    assert principal.can_publish


async def test_alg_none_is_refused(hs_verifier: TokenVerifier) -> None:
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    unsigned = f"{header}.{_b64(orjson.dumps(_claims()))}."
    with pytest.raises(Unauthorized, match="not accepted"):
        await hs_verifier.verify(unsigned)


async def test_wrong_signature_is_refused(hs_verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthorized):
        await hs_verifier.verify(jwt.encode(_claims(), "another-secret-of-sufficient-length!!", algorithm="HS256"))


async def test_tampered_claims_are_refused(hs_verifier: TokenVerifier) -> None:
    header, _payload, signature = jwt.encode(_claims(), TEST_SECRET, algorithm="HS256").split(".")
    forged = _b64(orjson.dumps(_claims(tid="t2")))
    with pytest.raises(Unauthorized):
        await hs_verifier.verify(f"{header}.{forged}.{signature}")


async def test_expired_token_is_refused_as_expired(hs_verifier: TokenVerifier) -> None:
    old = int(time.time()) - 3600
    with pytest.raises(TokenExpired):
        await hs_verifier.verify(jwt.encode(_claims(exp=old), TEST_SECRET, algorithm="HS256"))


@pytest.mark.parametrize("missing", ["sub", "tid", "exp"])
async def test_required_claims(hs_verifier: TokenVerifier, missing: str) -> None:
    claims = _claims()
    del claims[missing]
    with pytest.raises(Unauthorized):
        await hs_verifier.verify(jwt.encode(claims, TEST_SECRET, algorithm="HS256"))


@pytest.mark.parametrize("claims", [{"sub": "a b"}, {"tid": "t:1"}, {"channels": "repository:*"}, {"scope": ["publish"]}])
async def test_malformed_claims_are_refused(hs_verifier: TokenVerifier, claims: dict[str, object]) -> None:
    with pytest.raises(Unauthorized):
        await hs_verifier.verify(jwt.encode(_claims(**claims), TEST_SECRET, algorithm="HS256"))


async def test_audience_checked_when_configured(tmp_path) -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET, jwt_audience="forge", data_dir=tmp_path))
    with pytest.raises(Unauthorized):
        await verifier.verify(jwt.encode(_claims(aud="someone-else"), TEST_SECRET, algorithm="HS256"))
    with pytest.raises(Unauthorized):
        await verifier.verify(jwt.encode(_claims(), TEST_SECRET, algorithm="HS256"))
    assert (await verifier.verify(jwt.encode(_claims(aud="forge"), TEST_SECRET, algorithm="HS256"))).user == "u1"


async def test_rs256_with_public_key(tmp_path, rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    verifier = TokenVerifier(Settings(jwt_algorithms="RS256", jwt_public_key=public.decode(), data_dir=tmp_path))
    assert (await verifier.verify(jwt.encode(_claims(), private, algorithm="RS256"))).tenant == "t1"
    with pytest.raises(Unauthorized, match="not accepted"):  # HS is not configured, so not accepted
        await verifier.verify(jwt.encode(_claims(), TEST_SECRET, algorithm="HS256"))


async def test_algorithm_confusion_public_key_as_hmac_secret(tmp_path, rsa_keys: tuple[bytes, bytes]) -> None:
    """With HS256 and RS256 both allowed, an HS256 token signed with the public key must fail."""
    _, public = rsa_keys
    verifier = TokenVerifier(Settings(jwt_algorithms="HS256,RS256", jwt_secret=TEST_SECRET,
                                      jwt_public_key=public.decode(), data_dir=tmp_path))
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(orjson.dumps(_claims()))
    import hashlib
    import hmac

    signature = _b64(hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthorized):
        await verifier.verify(f"{header}.{payload}.{signature}")


def test_unknown_algorithm_setting_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(jwt_algorithms="none")


async def test_generated_dev_secret_is_stable(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.hs_secret() == Settings(data_dir=tmp_path).hs_secret()
    assert len(settings.hs_secret()) >= 32
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


async def test_ticket_is_single_use() -> None:
    store = TicketStore(30)
    principal = Principal("u1", "t1", time.time() + 600)
    ticket = await store.issue(principal)
    assert await store.redeem(ticket) == principal
    with pytest.raises(Unauthorized):
        await store.redeem(ticket)
    with pytest.raises(Unauthorized):
        await store.redeem("made-up")


async def test_ticket_in_redis_is_single_use_and_shared(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        issuer, redeemer = TicketStore(30, redis=client, keys=Keys(prefix)), TicketStore(30, redis=client, keys=Keys(prefix))
        ticket = await issuer.issue(Principal("u1", "t1", time.time() + 600, ("repository:*",), frozenset({"x"})))
        principal = await redeemer.redeem(ticket)
        assert principal.patterns == ("repository:*",) and principal.scopes == frozenset({"x"})
        with pytest.raises(Unauthorized):
            await issuer.redeem(ticket)
    finally:
        await client.aclose()


async def test_ticket_for_expired_token_is_refused() -> None:
    store = TicketStore(30)
    ticket = await store.issue(Principal("u1", "t1", time.time() - 1))
    with pytest.raises(TokenExpired):
        await store.redeem(ticket)
