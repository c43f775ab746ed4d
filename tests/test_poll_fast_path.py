"""GET /v1/poll is served without FastAPI's dependency solving, with the documented route's
checks, in its order, and its errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.dependencies import utils as fastapi_deps
from starlette import routing

from app.settings import Settings
from tests.conftest import auth, running_app, token


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths the router was asked to match (the full middleware stack ends there)."""
    seen: list[str] = []
    route = routing.Router.__call__

    async def counting(self: routing.Router, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await route(self, scope, receive, send)

    monkeypatch.setattr(routing.Router, "__call__", counting)
    return seen


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    solve = fastapi_deps.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi_deps, "solve_dependencies", counting)
    import fastapi.routing
    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return seen


async def test_polls_skip_the_dependency_solver_and_answer_as_documented(make_settings: Callable[..., Settings],
                                                                         solved: list[str], routed: list[str]) -> None:
    async with running_app(make_settings(max_connections=1)) as (_app, client):
        ok = await client.get("/v1/poll", params={"timeout": "0"}, headers=auth(token()))
        assert ok.status_code == 200 and set(ok.json()) == {"events", "cursor", "reset"}
        assert ok.headers["cache-control"] == "no-store"
        # the documented route is still the one in OpenAPI
        assert "/v1/poll" in (await client.get("/openapi.json")).json()["paths"]

        checks = [
            ({"timeout": "0"}, {}, 401, "unauthorized"),  # no token
            ({"timeout": "-1"}, auth(token()), 422, "invalid_request"),
            ({"timeout": "soon"}, auth(token()), 422, "invalid_request"),
            ({"timeout": "nan"}, auth(token()), 422, "invalid_request"),
            ({"timeout": "0", "client_id": "x" * 129}, auth(token()), 422, "invalid_request"),
            ({"timeout": "0", "since": "not-a-cursor"}, auth(token()), 400, "bad_cursor"),
            ({"timeout": "0", "channels": "user:someone-else"}, auth(token()), 403, "forbidden"),
        ]
        for params, headers, status, code in checks:
            answer = await client.get("/v1/poll", params=params, headers=headers)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (params, answer.text)
        invalid = (await client.get("/v1/poll", params={"timeout": "-1"}, headers=auth(token()))).json()
        assert invalid["errors"][0]["loc"] == ["query", "timeout"]
        assert (await client.get("/v1/poll", params={"access_token": token(), "timeout": "0"})).status_code == 200
        # past the router and the middleware, but with what the middleware gave a poll: CORS and the request id
        cors = await client.get("/v1/poll", params={"timeout": "0"},
                                headers={**auth(token()), "Origin": "https://app.example", "X-Request-ID": "req-1234"})
        assert cors.headers["access-control-allow-origin"] == "*" and cors.headers["x-request-id"] == "req-1234"
        refused = await client.get("/v1/poll", params={"timeout": "0"}, headers={"Origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
        assert refused.headers["www-authenticate"] == "Bearer"
        preflight = await client.options("/v1/poll", headers={"Origin": "https://app.example",
                                                              "Access-Control-Request-Method": "GET"})
        assert preflight.status_code == 200  # preflights take the full stack
    assert "/v1/poll" not in solved
    assert "/v1/poll" not in routed and "/openapi.json" in routed
