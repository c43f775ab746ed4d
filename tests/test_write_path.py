"""Which way live events reach sockets is checked at start-up, logged, and exported: an uvicorn
release that changed what the direct writers read makes the process fall back to ASGI, loudly."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
import orjson
import pytest
import websockets

from app.transports import direct
from tests.conftest import TEST_SECRET, LiveServer, auth, free_port, service_token, token


def test_the_installed_uvicorn_has_what_the_direct_writers_read() -> None:
    assert direct.incompatibility() is None


def test_a_missing_attribute_or_hook_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = direct.WebSocketsSansIOProtocol
    monkeypatch.setitem(direct._USES, cls, (*direct._USES[cls], "write_buffer_high_water_mark_that_does_not_exist"))
    reason = direct.incompatibility()
    assert reason is not None and "write_buffer_high_water_mark_that_does_not_exist" in reason
    monkeypatch.undo()
    monkeypatch.setitem(direct._HOOKS, direct.HttpToolsProtocol, ("on_headers_complete", "on_a_hook_that_is_gone"))
    reason = direct.incompatibility()
    assert reason is not None and "on_a_hook_that_is_gone" in reason


def _write_path(server: LiveServer) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("realtime_write_path{"):
            labels, value = line[len("realtime_write_path{"):].split("} ")
            pairs = dict(part.split("=") for part in labels.split(","))
            values[(pairs["transport"].strip('"'), pairs["path"].strip('"'))] = float(value)
    return values


def test_a_served_process_says_it_writes_directly(live_servers, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    server = live_servers()
    assert _write_path(server) == {("ws", "direct"): 1.0, ("ws", "asgi"): 0.0, ("sse", "direct"): 1.0, ("sse", "asgi"): 0.0}
    assert "write path: direct (uvicorn " in server.logs()


class _ChangedUvicornServer(LiveServer):
    """`python -m app serve`, as if uvicorn no longer set an attribute the direct writers read."""

    def command(self) -> list[str]:
        code = ("import sys; from app.transports import direct; "
                "cls = direct.WebSocketsSansIOProtocol; direct._USES[cls] = (*direct._USES[cls], 'gone_in_this_release'); "
                "from app.cli import main; main(sys.argv[1:])")
        return [sys.executable, "-c", code, "serve", "--port", str(self.port)]


async def test_a_changed_uvicorn_falls_back_to_asgi_and_still_delivers(tmp_path, prefix: str, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(tmp_path), "JWT_SECRET": TEST_SECRET, "REDIS_PREFIX": prefix, "REDIS_URL": redis_url})
    server = _ChangedUvicornServer(env, free_port()).start()
    try:
        assert _write_path(server) == {("ws", "asgi"): 1.0, ("ws", "direct"): 0.0, ("sse", "asgi"): 1.0, ("sse", "direct"): 0.0}
        assert "write path: asgi (uvicorn" in server.logs() and "gone_in_this_release" in server.logs()
        user = token(channels=["repository:*"])
        async with websockets.connect(f"{server.ws_url}/v1/ws?access_token={user}&channels=repository:r1") as ws:
            for _ in range(3):
                assert orjson.loads(await ws.recv())["op"] == "subscribed"
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                answer = await http.post("/v1/events", headers=auth(service_token()), json={
                    "tenant": "t1", "channel": "repository:r1", "type": "thing.happened", "data": {"i": 1}})
                assert answer.status_code == 202, answer.text
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (event["id"], event["data"]) == (answer.json()["id"], {"i": 1})
    finally:
        server.stop()
