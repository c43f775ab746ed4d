"""No route's dependencies run in FastAPI's thread pool: a plain `def` dependency costs a thread
hand-off per request, and under load a queue behind the pool's 40 threads (seen at scale: SSE and
poll set-ups waiting in `run_in_threadpool` for `get_services`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.main import create_app
from app.settings import Settings


def _sync_calls(dependant: Dependant) -> list[str]:
    found = []
    for dep in dependant.dependencies:
        call: Any = dep.call
        target = call if inspect.isfunction(call) or inspect.ismethod(call) else type(call).__call__
        if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
            found.append(getattr(call, "__qualname__", repr(call)))
        found += _sync_calls(dep)
    return found


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI keeps those as routers of their own)."""
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif (included := getattr(route, "original_router", None)) is not None:
            out += _api_routes(included.routes)
    return out


def test_every_dependency_is_async(make_settings: Callable[..., Settings]) -> None:
    routes = _api_routes(create_app(make_settings()).routes)
    assert len(routes) > 20 and any(route.path == "/v1/poll" for route in routes)
    sync = {f"{route.path}: {name}" for route in routes for name in _sync_calls(route.dependant)}
    assert sync == set()
