"""A WebSocket to /v1/ws goes straight to its endpoint: none of the HTTP middleware's frames stay
on an idle connection's stack, yet it is still in the request log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import token


def test_websockets_skip_the_middleware_and_keep_the_request_log(make_settings: Callable[..., Settings],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    through = CORSMiddleware.__call__

    async def spy(self: CORSMiddleware, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await through(self, scope, receive, send)

    monkeypatch.setattr(CORSMiddleware, "__call__", spy)
    with caplog.at_level(logging.INFO, logger="app.access"), TestClient(create_app(make_settings())) as client:
        with client.websocket_connect("/v1/ws", headers={"Authorization": f"Bearer {token()}"}) as ws:
            assert {ws.receive_json()["channel"] for _ in range(2)} == {"user:u1", "tenant:t1"}
            ws.send_json({"op": "ping"})
            assert ws.receive_json()["op"] == "pong"
        assert client.get("/healthz").status_code == 200
    assert "websocket" not in seen and "http" in seen  # the HTTP middleware still runs for HTTP
    assert any(r.getMessage() == "WS /v1/ws" for r in caplog.records if r.name == "app.access")
