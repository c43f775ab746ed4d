"""Verified tokens are remembered (a long-poll or reconnect re-sends the same one), never past
their expiry, per exact token, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app import auth
from app.auth import TokenVerifier, mint_token
from app.errors import TokenExpired
from app.settings import Settings


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    decode = auth.jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


async def test_a_token_is_verified_once_and_each_token_answers_for_itself(make_settings: Callable[..., Settings],
                                                                          decodes: list[str]) -> None:
    settings = make_settings()
    verifier = TokenVerifier(settings)
    alice, bob = mint_token(settings, user="alice", tenant="t1"), mint_token(settings, user="bob", tenant="t2")
    for _ in range(5):
        assert (await verifier.verify(alice)).user == "alice"
        principal = await verifier.verify(bob)
        assert (principal.user, principal.tenant) == ("bob", "t2")
    assert decodes == [alice, bob]


async def test_a_remembered_token_still_expires(make_settings: Callable[..., Settings], decodes: list[str]) -> None:
    settings = make_settings(jwt_leeway_seconds=0)
    verifier = TokenVerifier(settings)
    token = mint_token(settings, user="u1", tenant="t1", ttl=2)
    await verifier.verify(token)
    await asyncio.sleep(2.3)
    with pytest.raises(TokenExpired):
        await verifier.verify(token)
    assert len(decodes) == 2  # verified again once past its expiry, and refused


async def test_the_memory_is_bounded(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_VERIFIED_TOKENS", 3)
    settings = make_settings()
    verifier = TokenVerifier(settings)
    for i in range(10):
        await verifier.verify(mint_token(settings, user=f"u{i}", tenant="t1"))
    assert len(verifier._verified) == 3
