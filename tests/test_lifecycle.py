"""One connection lifecycle on every transport: however a connection ends, its session leaves
every channel and its slot comes back. SSE used to clean up in its stream's generator, which a
response whose client left before it streamed never runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.settings import Settings
from tests.conftest import auth, running_app, token


def _open(services: Any) -> tuple[int, int]:
    return services.hub.subscribers("t1", "repository:r1"), services.connections.open


async def test_an_sse_response_whose_client_left_before_it_streamed_still_closes_its_session(
        make_settings: Callable[..., Settings]) -> None:
    """The client is gone before the first byte: the stream's generator never starts."""
    async with running_app(make_settings()) as (app, _):
        services = app.state.services  # type: ignore[attr-defined]
        user = token(channels=["repository:*"])
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": "/v1/sse", "raw_path": b"/v1/sse", "query_string": b"channels=repository:r1", "root_path": "",
                 "headers": [(b"authorization", f"Bearer {user}".encode()), (b"host", b"app")],
                 "client": ("127.0.0.1", 1), "server": ("app", 80)}
        sent: list[dict[str, Any]] = []
        opened = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await opened.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.start":
                assert _open(services) == (1, 1)  # the session is open, its stream not started yet
                opened.set()  # the client leaves now, while the response is being started
                await asyncio.sleep(0.05)

        await asyncio.wait_for(app(scope, receive, send), 10)
        assert [m["type"] for m in sent][:1] == ["http.response.start"]
        assert not any(m.get("body", b"").startswith(b"id:") for m in sent)
        assert _open(services) == (0, 0)  # no session left in the hub, no slot held


async def test_a_refused_sse_or_poll_request_leaves_nothing_behind(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (app, http):
        services = app.state.services  # type: ignore[attr-defined]
        user = token(channels=["repository:*"])
        for path in ("/v1/sse", "/v1/poll"):
            refused = await http.get(path, params={"channels": "repository:r1,secret:s1", "timeout": 0}, headers=auth(user))
            assert refused.status_code == 403, refused.text
            bad = await http.get(path, params={"channels": "repository:r1", "since": "nope", "timeout": 0}, headers=auth(user))
            assert bad.status_code == 400, bad.text
            assert _open(services) == (0, 0), path
