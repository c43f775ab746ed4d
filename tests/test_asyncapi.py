"""docs/asyncapi.yaml (the WebSocket and SSE channels, served at GET /asyncapi.yaml) cannot drift
from the code: every op the WebSocket handler dispatches on, every `"op"` frame it writes, every
close code, and every error code a stream can carry must be in it."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import app.core.session
import app.errors
import app.transports.sse
import app.transports.ws
from app.errors import ServiceError
from app.settings import Settings
from tests.conftest import ROOT, running_app

DOC = ROOT / "docs" / "asyncapi.yaml"
WS = ROOT / "app" / "transports" / "ws.py"
# Where a WebSocket, SSE or long-poll request's errors come from: the transports, the session core,
# authentication, channel authorization, the connection and rate limits, presence; and cursor
# parsing (app.eventlog.base, whose other errors belong to publishing).
STREAM_MODULES = [*sorted((ROOT / "app" / "transports").glob("*.py")), ROOT / "app" / "core" / "session.py",

                  ROOT / "app" / "auth.py", ROOT / "app" / "channels.py", ROOT / "app" / "deps.py",
                  ROOT / "app" / "limits.py", ROOT / "app" / "api" / "presence.py"]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(DOC.read_text())
    assert isinstance(loaded, dict)
    return loaded


def handled_ops() -> set[str]:
    """The string constants `op` is compared with in the WebSocket's frame handler (`_handle`)."""
    ops: set[str] = set()
    for node in ast.walk(ast.parse(WS.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "_handle":
            for compare in ast.walk(node):
                if isinstance(compare, ast.Compare) and isinstance(compare.left, ast.Name) and compare.left.id == "op":
                    ops |= {c.value for c in ast.walk(compare) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return ops


def written_ops() -> set[str]:
    """Every `"op": "<name>"` frame the WebSocket module writes (outside its OpenAPI prose)."""
    source = WS.read_text().split("_WS_DOC = ", 1)[0]
    return set(re.findall(r'"op"\s*:\s*"([a-z_]+)"', source))


def close_codes() -> set[int]:
    """Every integer literal in the WebSocket module that is a close code (1000-1015, 4000-4999)."""
    return {node.value for node in ast.walk(ast.parse(WS.read_text()))
            if isinstance(node, ast.Constant) and type(node.value) is int
            and (1000 <= node.value <= 1015 or 4000 <= node.value <= 4999)}


def stream_error_codes() -> set[str]:
    """The wire codes of every ServiceError named in the modules a stream's errors come from, and
    the codes the SSE stream writes itself."""
    errors: dict[str, type[ServiceError]] = {}
    for module in (app.errors, app.core.session, app.transports.ws):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, ServiceError):
                errors[name] = value
    codes = {app.errors.BadCursor.code}
    for path in STREAM_MODULES:
        source = path.read_text()
        codes |= {errors[name].code for name in set(re.findall(r"\b(_?[A-Z]\w+)\b", source)) & set(errors)}
        codes |= set(re.findall(r'error_frame\("([a-z_]+)"', source))
    return codes


def messages(doc: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    """The messages of a channel, with `$ref`s into components resolved."""
    resolved = []
    for message in doc["channels"][channel]["messages"].values():
        if "$ref" in message:
            name = message["$ref"].rsplit("/", 1)[-1]
            message = doc["components"]["messages"][name]
        resolved.append(message)
    return resolved


def payload_ops(doc: dict[str, Any], channel: str, action: str) -> set[str]:
    """The `op` constants of the messages the server `action`s (send/receive) on `channel`."""
    ops: set[str] = set()
    for operation in doc["operations"].values():
        if operation["action"] != action or operation["channel"]["$ref"] != f"#/channels/{channel}":
            continue
        for ref in operation["messages"]:
            name = ref["$ref"].rsplit("/", 1)[-1]
            message = doc["channels"][channel]["messages"][name]
            if "$ref" in message:
                message = doc["components"]["messages"][message["$ref"].rsplit("/", 1)[-1]]
            op = message["payload"].get("properties", {}).get("op", {})
            if "const" in op:
                ops.add(op["const"])
    return ops


def test_the_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    assert str(doc["asyncapi"]).startswith("3."), doc["asyncapi"]
    assert {"websocket", "sse"} <= set(doc["channels"])
    assert doc["channels"]["websocket"]["address"] == "/v1/ws" and doc["channels"]["sse"]["address"] == "/v1/sse"


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    found = refs(doc)
    assert len(found) > 40
    for ref in found:
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]


def test_every_op_the_websocket_handles_and_writes_is_documented(doc: dict[str, Any]) -> None:
    handled = handled_ops()
    assert {"subscribe", "unsubscribe", "ping", "refresh", "ack", "presence"} <= handled  # the parse found them
    assert handled <= payload_ops(doc, "websocket", "receive")
    written = written_ops()
    assert {"error", "subscribed", "pong", "reset"} <= written
    assert written <= payload_ops(doc, "websocket", "send")


def test_every_close_code_is_documented(doc: dict[str, Any]) -> None:
    documented = {int(code) for code in doc["channels"]["websocket"]["x-close-codes"]}
    codes = close_codes() | {1012}  # 1012 comes from uvicorn on SIGTERM, not from our code
    assert {4001, 4400, 4008, 1009} <= codes
    assert codes <= documented


def test_every_error_code_a_stream_can_carry_is_documented(doc: dict[str, Any]) -> None:
    codes = stream_error_codes()
    assert {"unauthorized", "token_expired", "forbidden", "bad_channel", "bad_cursor", "bad_frame", "unknown_op",
            "slow_consumer"} <= codes
    assert codes <= set(doc["components"]["schemas"]["ErrorCode"]["enum"])


def test_sse_event_names_are_documented(doc: dict[str, Any]) -> None:
    sse = app.transports.sse
    names = {message.get("x-sse-event") for message in messages(doc, "sse")}
    assert {"reset", "error", "<type>"} <= names
    assert b"event: reset" in sse.RESET_FRAME and b"event: error" in sse.error_frame("x", "y")


async def test_the_document_is_served(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (app_, http):
        response = await http.get("/asyncapi.yaml")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(response.text) == yaml.safe_load(DOC.read_text())
        assert "/asyncapi.yaml" in (await http.get("/openapi.json")).json()["info"]["description"]

