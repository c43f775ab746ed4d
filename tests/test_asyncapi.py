"""docs/asyncapi.yaml (the WebSocket and SSE channels, served at GET /asyncapi.yaml) cannot drift
from the code: every op the WebSocket handler dispatches on, every `"op"` frame it writes, every
close code, and every error code a stream can carry must be in it."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

import app.core.session
import app.errors
import app.protocol.ws
import app.transports.sse
import app.transports.ws
from app.errors import ServiceError
from app.protocol import sse as sse_protocol
from app.protocol import ws as protocol
from app.settings import Settings
from tests.conftest import ROOT, running_app

DOC = ROOT / "docs" / "asyncapi.yaml"
README = ROOT / "README.md"
WS = ROOT / "app" / "transports" / "ws.py"
# Where a WebSocket, SSE or long-poll request's errors come from: the transports, the wire
# protocol, the session core, authentication, channel authorization, the connection and rate
# limits, presence; and cursor parsing (app.eventlog.base, whose other errors belong to publishing).
STREAM_MODULES = [*sorted((ROOT / "app" / "transports").glob("*.py")), *sorted((ROOT / "app" / "protocol").glob("*.py")),
                  *sorted((ROOT / "app" / "core").glob("*.py")),
                  ROOT / "app" / "auth.py", ROOT / "app" / "channels.py", ROOT / "app" / "deps.py",
                  ROOT / "app" / "limits.py", ROOT / "app" / "presence" / "query.py"]
STREAM_MODULES.remove(ROOT / "app" / "core" / "publish.py")  # publishing's errors are the HTTP routes'
STREAM_MODULES.remove(ROOT / "app" / "core" / "typed.py")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(DOC.read_text())
    assert isinstance(loaded, dict)
    return loaded


def handled_ops() -> set[str]:
    """The ops the WebSocket transport has a handler for."""
    return set(app.transports.ws._HANDLERS)


def written_ops() -> set[str]:
    """Every op a server frame may carry: the protocol module builds them all (control() refuses
    any other), and the transport writes none by hand."""
    source = WS.read_text()
    assert not re.findall(r'"op"\s*:', source), "the transport must build its frames with app.protocol.ws"
    return set(protocol.SERVER_OPS)


def close_codes() -> set[int]:
    """The close codes the server sends: the protocol's enum. The transport holds no bare close
    code literal (1000-1015, 4000-4999) besides it."""
    literals = {node.value for node in ast.walk(ast.parse(WS.read_text()))
                if isinstance(node, ast.Constant) and type(node.value) is int
                and (1000 <= node.value <= 1015 or 4000 <= node.value <= 4999)}
    assert literals <= {1006}, f"bare close codes in app/transports/ws.py: {literals}"  # 1006: a lost socket, never sent
    return {int(code) for code in protocol.CloseCode}


def stream_error_codes() -> set[str]:
    """The wire codes of every ServiceError named in the modules a stream's errors come from, and
    the codes the SSE stream writes itself."""
    errors: dict[str, type[ServiceError]] = {}
    for module in (app.errors, app.core.session, app.protocol.ws, app.transports.ws):
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
    assert {"subscribe", "unsubscribe", "ping", "refresh", "ack", "presence"} <= handled
    assert handled == set(protocol.CLIENT_OPS)  # a handler for every op the protocol accepts, and no other
    assert handled <= payload_ops(doc, "websocket", "receive")
    written = written_ops()
    assert {"error", "subscribed", "pong", "reset"} <= written
    assert written <= payload_ops(doc, "websocket", "send")


def test_every_close_code_is_documented(doc: dict[str, Any]) -> None:
    documented = {int(code) for code in doc["channels"]["websocket"]["x-close-codes"]}
    codes = close_codes()
    assert {4001, 4400, 4008, 1009, 1012} <= codes  # 1012 comes from uvicorn on SIGTERM, listed for clients
    assert set(protocol.CLOSE_CODES) == set(protocol.CloseCode)  # each has its meaning
    assert codes <= documented


def test_the_readme_lists_every_op_and_close_code() -> None:
    section = README.read_text().split("## Wire protocol", 1)[1].split("\n## ", 1)[0]
    for op in protocol.CLIENT_OPS:
        assert f'{{"op":"{op}"' in section, f"README's wire protocol misses the client op {op}"
    for op in protocol.SERVER_OPS:
        assert f'"op":"{op}"' in section, f"README's wire protocol misses the server frame {op}"
    table = {int(m) for m in re.findall(r"^\| (\d{4})\b", section, re.M)}
    assert table == {int(code) for code in protocol.CloseCode}, "README's close code table differs from CloseCode"


def test_control_frames_are_only_the_protocols() -> None:
    assert protocol.control("pong") == '{"op":"pong"}' and protocol.RESET == '{"op":"reset"}'
    with pytest.raises(ValueError):
        protocol.control("surprise")


def test_every_error_code_a_stream_can_carry_is_documented(doc: dict[str, Any]) -> None:
    codes = stream_error_codes()
    assert {"unauthorized", "token_expired", "forbidden", "bad_channel", "bad_cursor", "bad_frame", "unknown_op",
            "slow_consumer"} <= codes
    assert codes <= set(doc["components"]["schemas"]["ErrorCode"]["enum"])


def test_sse_event_names_are_documented(doc: dict[str, Any]) -> None:
    names = {message.get("x-sse-event") for message in messages(doc, "sse")}
    assert {"reset", "error", "<type>"} <= names
    assert b"event: reset" in sse_protocol.RESET_FRAME and b"event: error" in sse_protocol.error_frame("x", "y")


async def test_the_document_is_served(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, http):
        response = await http.get("/asyncapi.yaml")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(response.text) == yaml.safe_load(DOC.read_text())
        assert "/asyncapi.yaml" in (await http.get("/openapi.json")).json()["info"]["description"]

