"""The AUTHZ_URL subscribe hook, end to end: a real hook server (in a thread of this process)
answering `{"allow": true|false}`, a real `python -m app serve`, real WebSocket, SSE and
long-poll subscribes.

README: POST `{"tenant","user_id","channel"}`, allow on `200 {"allow": true}`; answers are cached
for AUTHZ_CACHE_SECONDS; a failing hook denies (and, app/channels.py says, is asked again next
time). Tokens here carry no `channels` patterns, so every channel outside user:/tenant: goes to
the hook. Every test uses channels of its own (the hook's answers and the server's cache are per
channel), so they share one server.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_SECRET, LiveServer, free_port, service_token, token
from tests.live_support import DROP, WAIT, WS, LocalHTTPServer, Request

HOOK_PATH = "/authz/check"


class Hook:
    """The authorization service: answers by (tenant, channel), or by channel for every tenant;
    a channel it was told nothing about is denied."""

    def __init__(self) -> None:
        self.rules: dict[tuple[str | None, str], str] = {}
        self.release = threading.Event()  # ends the `hang` answers
        self.server = LocalHTTPServer(self._answer)

    def rule(self, channel: str, action: str, tenant: str | None = None) -> None:
        self.rules[(tenant, channel)] = action

    def _answer(self, request: Request) -> tuple[int, Any] | object:
        body = request.json()
        action = self.rules.get((body.get("tenant"), body.get("channel")), self.rules.get((None, body.get("channel")), "deny"))
        if action == "allow":
            return 200, {"allow": True}
        if action == "deny":
            return 200, {"allow": False}
        if action == "truthy":  # only `true` allows
            return 200, {"allow": "yes"}
        if action == "error":
            return 500, {"error": "the hook is broken"}
        if action == "garbage":
            return 200, b"<html>not json</html>"
        if action == "not-an-object":  # JSON, but not the object the contract names
            return 200, b"[true]"
        if action == "drop":
            return DROP
        if action == "hang":  # longer than AUTHZ_TIMEOUT_SECONDS
            self.release.wait(60)
            return 200, {"allow": True}
        raise AssertionError(f"unknown hook action {action!r}")

    def asked(self, channel: str, tenant: str | None = None, user: str | None = None) -> list[dict]:
        """The bodies of the hook calls about `channel` (of one tenant / user when given)."""
        bodies = [r.json() for r in self.server.calls()]
        return [b for b in bodies if b.get("channel") == channel
                and (tenant is None or b.get("tenant") == tenant) and (user is None or b.get("user_id") == user)]


def _start_server(data_dir: Path, hook: Hook, **extra: str) -> LiveServer:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(data_dir), "JWT_SECRET": TEST_SECRET, "AUTHZ_URL": hook.server.url + HOOK_PATH})
    env.update(extra)
    return LiveServer(env, free_port()).start()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hook, LiveServer]]:
    """A hook and a server (embedded engine) asking it: answers cached for 10 minutes, a 5 s timeout."""
    hook = Hook()
    with hook.server:
        server = _start_server(tmp_path_factory.mktemp("authz"), hook, AUTHZ_CACHE_SECONDS="600", AUTHZ_TIMEOUT_SECONDS="5")
        try:
            yield hook, server
        finally:
            hook.release.set()
            server.stop()


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


def fresh(namespace: str = "project") -> str:
    return f"{namespace}:{uuid.uuid4().hex[:12]}"


async def ws_subscribe(ws: WS, channel: str) -> dict:
    """Send a subscribe op; the answer: `subscribed`, or an error frame."""
    await ws.send({"op": "subscribe", "channel": channel})
    frame = await ws.next()
    assert isinstance(frame, dict) and frame.get("op") in ("subscribed", "error"), frame
    return frame


async def open_ws(server: LiveServer, sub: str = "u1", tid: str = "t1") -> WS:
    ws = await WS.connect(server.ws_url, token(sub, tid))
    await ws.subscribed({f"user:{sub}", f"tenant:{tid}"})
    return ws


def allowed(frame: dict, channel: str) -> bool:
    return frame == {"op": "subscribed", "channel": channel}


def forbidden(frame: dict, channel: str) -> bool:
    return frame.get("op") == "error" and frame.get("code") == "forbidden" and frame.get("channel") == channel


async def publish(http: httpx.AsyncClient, server: LiveServer, channel: str, data: dict, tenant: str = "t1") -> str:
    body = {"tenant": tenant, "channel": channel, "type": "test.event", "data": data}
    response = await http.post(f"{server.url}/v1/events", json=body, headers={"Authorization": f"Bearer {service_token(tenant)}"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def sse_status(http: httpx.AsyncClient, server: LiveServer, tok: str, channel: str) -> int:
    async with http.stream("GET", f"{server.url}/v1/sse", params={"channels": channel},
                           headers={"Authorization": f"Bearer {tok}"}) as response:
        return response.status_code


async def poll_status(http: httpx.AsyncClient, server: LiveServer, tok: str, channel: str) -> int:
    response = await http.get(f"{server.url}/v1/poll", params={"channels": channel, "timeout": 0},
                              headers={"Authorization": f"Bearer {tok}"})
    return response.status_code


# --------------------------------------------------------------------------------------------


async def test_the_hook_decides_and_is_sent_tenant_user_and_channel(hooked: tuple[Hook, LiveServer],
                                                                     http: httpx.AsyncClient) -> None:
    hook, server = hooked
    yes, no = fresh(), fresh()
    hook.rule(yes, "allow")
    hook.rule(no, "deny")
    async with await open_ws(server, "u1", "t1") as ws:
        assert allowed(await ws_subscribe(ws, yes), yes)
        assert forbidden(await ws_subscribe(ws, no), no)

        # the subscription is real, the refused one is not: an event on the refused channel is not
        # delivered (the allowed one published after it comes first)
        await publish(http, server, no, {"n": "refused"})
        event_id = await publish(http, server, yes, {"n": "allowed"})
        [event] = await ws.events(1)
        assert (event["id"], event["channel"], event["data"]) == (event_id, yes, {"n": "allowed"})

    # what the hook received: a JSON POST to the configured URL with the token's tenant and subject
    [call] = hook.server.calls(lambda r: r.body and r.json().get("channel") == yes)
    assert (call.method, call.path) == ("POST", HOOK_PATH)
    assert call.headers["content-type"].startswith("application/json")
    assert call.json() == {"tenant": "t1", "user_id": "u1", "channel": yes}
    assert hook.asked(no) == [{"tenant": "t1", "user_id": "u1", "channel": no}]

    # SSE and long-polling ask the same hook: a refused channel refuses the request (403)
    other_yes, other_no = fresh(), fresh()
    hook.rule(other_yes, "allow")
    hook.rule(other_no, "deny")
    tok = token("u1", "t1")
    assert await sse_status(http, server, tok, other_yes) == 200
    assert await sse_status(http, server, tok, other_no) == 403
    third_yes, third_no = fresh(), fresh()
    hook.rule(third_yes, "allow")
    hook.rule(third_no, "deny")
    assert await poll_status(http, server, tok, third_yes) == 200
    assert await poll_status(http, server, tok, third_no) == 403
    for channel in (other_yes, other_no, third_yes, third_no):
        assert hook.asked(channel) == [{"tenant": "t1", "user_id": "u1", "channel": channel}]


async def test_only_allow_true_allows(hooked: tuple[Hook, LiveServer]) -> None:
    hook, server = hooked
    channel = fresh()
    hook.rule(channel, "truthy")  # 200 {"allow": "yes"}
    async with await open_ws(server) as ws:
        assert forbidden(await ws_subscribe(ws, channel), channel)


async def test_answers_are_cached_per_tenant_user_and_channel(hooked: tuple[Hook, LiveServer], http: httpx.AsyncClient) -> None:
    hook, server = hooked
    yes, no = fresh(), fresh()
    hook.rule(yes, "allow")
    hook.rule(no, "deny")
    tok = token("u1", "t1")

    # within AUTHZ_CACHE_SECONDS, the same (tenant, user, channel) is asked once, whatever the
    # transport or connection, and a denial is remembered as well as an allowance
    async with await open_ws(server) as first, await open_ws(server) as second:
        for ws in (first, second):
            assert allowed(await ws_subscribe(ws, yes), yes)
            assert forbidden(await ws_subscribe(ws, no), no)
        await first.send({"op": "unsubscribe", "channel": yes})
        await first.expect("unsubscribed")
        assert allowed(await ws_subscribe(first, yes), yes)
    assert await sse_status(http, server, tok, yes) == 200
    assert await poll_status(http, server, tok, yes) == 200
    assert await poll_status(http, server, tok, no) == 403
    assert len(hook.asked(yes)) == 1
    assert len(hook.asked(no)) == 1

    # the cache is keyed by tenant: user u1 of tenant t2 is another principal; the hook allows
    # the channel for t1 only, so t1's cached yes must not let t2 in
    shared = fresh()
    hook.rule(shared, "allow", tenant="t1")
    hook.rule(shared, "deny", tenant="t2")
    async with await open_ws(server, "u1", "t1") as ws_t1:
        assert allowed(await ws_subscribe(ws_t1, shared), shared)
    async with await open_ws(server, "u1", "t2") as ws_t2:
        assert forbidden(await ws_subscribe(ws_t2, shared), shared)
    assert len(hook.asked(shared, tenant="t1")) == 1
    assert len(hook.asked(shared, tenant="t2")) == 1
    # and the other way round: t2's cached no does not shut t1's other users out
    async with await open_ws(server, "u2", "t1") as ws_u2:
        assert allowed(await ws_subscribe(ws_u2, shared), shared)
    assert hook.asked(shared, tenant="t1", user="u2") == [{"tenant": "t1", "user_id": "u2", "channel": shared}]

    # and by user: u2 of t1 is asked about `no` itself (u1's cached denial is u1's)
    hook.rule(no, "allow", tenant="t1")
    async with await open_ws(server, "u2", "t1") as ws_u2:
        assert allowed(await ws_subscribe(ws_u2, no), no)
    assert len(hook.asked(no, user="u2")) == 1
    async with await open_ws(server, "u1", "t1") as ws_u1:  # u1 still has its cached no
        assert forbidden(await ws_subscribe(ws_u1, no), no)
    assert len(hook.asked(no, user="u1")) == 1


@pytest.mark.parametrize("failure", [
    "garbage",  # 200 with a body that is not JSON
    "drop",  # the connection closed without an answer
    "error",  # a 500: no decision, so not cached
    "not-an-object",  # a 200 whose JSON is not an object: no decision either
])
async def test_a_failing_hook_denies_and_is_asked_again(hooked: tuple[Hook, LiveServer], http: httpx.AsyncClient,
                                                        failure: str) -> None:
    """A hook that fails denies (403 / a `forbidden` frame, never a 500 or a dropped socket), and
    its failure is not remembered: the next attempt asks again."""
    hook, server = hooked
    polled = fresh()
    hook.rule(polled, failure)
    assert await poll_status(http, server, token("u1", "t1"), polled) == 403
    channel = fresh()
    hook.rule(channel, failure)
    async with await open_ws(server) as ws:
        assert forbidden(await ws_subscribe(ws, channel), channel)
        assert forbidden(await ws_subscribe(ws, channel), channel)
        assert len(hook.asked(channel)) == 2  # a failure is not remembered: the next attempt asks again
        hook.rule(channel, "allow")  # the hook recovers
        assert allowed(await ws_subscribe(ws, channel), channel)
        assert len(hook.asked(channel)) == 3


async def test_a_hook_slower_than_the_timeout_denies_and_is_asked_again(hooked: tuple[Hook, LiveServer]) -> None:
    hook, server = hooked
    channel = fresh()
    hook.rule(channel, "hang")  # answers only after the test ends, far past AUTHZ_TIMEOUT_SECONDS=5
    async with await open_ws(server) as ws:
        assert forbidden(await ws_subscribe(ws, channel), channel)
        hook.rule(channel, "allow")
        assert allowed(await ws_subscribe(ws, channel), channel)
        assert len(hook.asked(channel)) == 2


async def test_cached_answers_expire_after_authz_cache_seconds(tmp_path: Path) -> None:
    """With AUTHZ_CACHE_SECONDS=1 a changed answer is seen once the cached one is older than 1 s."""
    hook = Hook()
    with hook.server:
        server = _start_server(tmp_path, hook, AUTHZ_CACHE_SECONDS="1")
        try:
            channel = fresh()
            hook.rule(channel, "allow")
            async with await open_ws(server) as ws:
                assert allowed(await ws_subscribe(ws, channel), channel)
                [first] = hook.server.calls()
                hook.rule(channel, "deny")  # the hook changes its mind
                # wait until the cached answer is surely stale (the server cached it after the call began)
                await asyncio.sleep(max(0.0, first.at + 1.5 - time.monotonic()))
                await ws.send({"op": "unsubscribe", "channel": channel})
                await ws.expect("unsubscribed")
                assert forbidden(await ws_subscribe(ws, channel), channel)
                assert len(hook.asked(channel)) == 2
        finally:
            server.stop()
