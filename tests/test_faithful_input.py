"""Input that JSON allows but the service cannot store or encode faithfully (CONTRACT.md section
10, last bullet): integers beyond 64 bits, lone surrogates and NUL characters in strings and keys,
numbers that are not finite, nesting deeper than 32. A 422 `unrepresentable_json` on every route
with a body, an error frame on the WebSocket (the connection stays), an ingest entry kept aside as
malformed; never a 500, and nothing stored or published.

Bodies and frames are written as JSON text with the escapes in it (`"\\ud800"`, `"\\u0000"`,
`99999999999999999999`), sent as raw bytes: Python's json module would refuse to write some of them.
The HTTP cases run in-process (SQLite with the embedded log, Postgres with Redis) and through a
live server (uvicorn, real sockets) on both databases.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app import faithful
from app.db import Base
from app.errors import Unrepresentable
from app.eventlog import create_event_log
from app.eventlog.base import ZERO
from app.eventlog.redis import RedisEventLog
from app.ingest import GROUP, Ingest
from app.keys import Keys
from app.protocol.ws import CLIENT_OPS
from app.redis_client import create_redis
from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, running_app, service_token, token
from tests.live_support import WS
from tests.notify_support import (
    Browser,
    backend,  # noqa: F401  (fixture)
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
)

JSON = {"Content-Type": "application/json"}
SERVICE_ROUTES = {("POST", "/v1/events"), ("POST", "/v1/notifications")}
# what a test may find changed by itself: the relay's lease row; the outbox empties as it publishes
UNWATCHED_TABLES = {"leases", "outbox"}


def nest(levels: int) -> str:
    """JSON text of `levels` objects nested in one another: nest(1) is `{}`."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def nested_value(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# One member (`"name":value`, as JSON text) each, to put into an object: what no route may take.
ODD_MEMBERS: dict[str, str] = {
    "integer 2^64": '"n":18446744073709551616',
    "integer 10^20": '"n":99999999999999999999',
    "integer -2^63-1": '"n":-9223372036854775809',
    "integer -10^20": '"n":-100000000000000000000',
    "lone surrogate in a string": '"s":"ok \\ud800"',
    "lone low surrogate in a string": '"s":"\\udfff"',
    "lone surrogate in a key": '"\\udc00":1',
    "NUL in a string": '"s":"a\\u0000b"',
    "NUL in a key": '"k\\u0000":1',
    "float 1e20": '"f":1e20',  # Postgres JSONB would give it back as the integer 10^20
    "float -1e19": '"f":-1e19',
    "number beyond a double": '"f":1e400',
    "NaN": '"f":NaN',
    "-Infinity": '"f":-Infinity',
}
# The same in the places the contract names, with what the message must say.
EXPECTED_WORDS = {
    "integer": "beyond 64 bits", "float": "beyond 64 bits", "surrogate": "lone surrogate", "NUL": "NUL",
    "double": "not finite", "NaN": "not finite", "Infinity": "not finite",
}
# What is at the edge and must be taken, exactly as sent (JSON text, then the value).
EDGES: dict[str, tuple[str, Any]] = {
    "integer 2^64-1": ('{"n":18446744073709551615}', {"n": 18446744073709551615}),
    "integer -2^63": ('{"n":-9223372036854775808}', {"n": -9223372036854775808}),
    "a surrogate pair": ('{"s":"\\ud83d\\ude00"}', {"s": "\U0001f600"}),
    "doubles just inside 64 bits": ('{"f":1.8e19,"g":-9.2e18,"h":1.5e-300}', {"f": 1.8e19, "g": -9.2e18, "h": 1.5e-300}),
    "nesting 32 deep": (nest(31), nested_value(31)),  # `data` is at level 2 of the body: 2..32
}


def words(case: str) -> str:
    return next(expected for key, expected in EXPECTED_WORDS.items() if key in case)


def event_body(data: str) -> bytes:
    return f'{{"tenant":"t1","channel":"analysis:a1","type":"x.y","data":{data}}}'.encode()


def notification_body(data: str = "{}", **fields: str) -> bytes:
    members = {"tenant": '"t1"', "user_id": '"u1"', "type": '"mention"', "title": '"t"', "message": '"m"', "data": data}
    members.update(fields)
    return ("{" + ",".join(f'"{name}":{value}' for name, value in members.items()) + "}").encode()


def refused(response: httpx.Response, *, code: str = "unrepresentable_json", expect: str | None = None) -> None:
    assert response.status_code == 422, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == code, body
    assert response.content.isascii()  # the message names the problem without carrying it
    if expect is not None:
        assert expect in body["message"], body


# --------------------------------------------------------------------------------------------
# the check itself
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ok"), [
    (2**64 - 1, True), (2**64, False), (-(2**63), True), (-(2**63) - 1, False), (10**30, False), (True, True),
    (1.8e19, True), (-9.2e18, True), (1e20, False), (-1e19, False), (1.5e308, False),
    (float("inf"), False), (float("-inf"), False), (float("nan"), False),
    ("plain", True), ("é \U0001f600", True), ("\ud800", False), ("x\udc00y", False), ("a\x00", False),
    ({"\ud83d": 1}, False), ({"k\x00": 1}, False), ({"k": [1, "\x00"]}, False), (None, True),
    (nested_value(32), True), (nested_value(33), False), ([[[[]]]], True),
])
def test_the_check_takes_what_can_be_stored_and_encoded_exactly(value: Any, ok: bool) -> None:
    if ok:
        faithful.check(value)
        orjson.dumps(value)  # what the check lets through, the encoder takes
        return
    with pytest.raises(Unrepresentable) as caught:
        faithful.check(value)
    assert caught.value.status == 422 and caught.value.code == "unrepresentable_json"
    assert orjson.dumps(caught.value.body()).isascii()  # an error frame or a 422 body can carry the message


def test_the_message_says_what_and_where() -> None:
    cases: list[tuple[Any, str]] = [
        ({"data": {"n": 10**20}}, "$.data.n is an integer beyond 64 bits"),
        ({"data": {"items": [1, {"s": "\ud800"}]}}, "$.data.items[1].s is a string with a lone surrogate"),
        ({"data": {"we ird\x00": 1}}, 'the key of $.data["we ird\\u0000"] has a NUL character'),
        ({"data": {"\udc00": 1}}, 'the key of $.data["\\udc00"] has a lone surrogate'),
        ({"data": {"f": float("nan")}}, "$.data.f is a number that is not finite"),
        ({"data": nested_value(32)}, "$.data" + ".a" * 31 + " nests deeper than 32 levels"),
    ]
    for value, message in cases:
        with pytest.raises(Unrepresentable) as caught:
            faithful.check(value)
        assert caught.value.message.startswith(message), caught.value.message
    with pytest.raises(Unrepresentable, match=r"^\$\.data\.n "):  # a value checked where it sits in its document
        faithful.check({"n": 10**20}, path="$.data", depth=2)
    with pytest.raises(Unrepresentable, match="deeper than 32"):
        faithful.check(nested_value(32), path="$.data", depth=2)  # levels 2..33
    faithful.check(nested_value(31), path="$.data", depth=2)  # levels 2..32


def test_loads_is_exact_where_orjson_is_not() -> None:
    assert orjson.loads(b'{"n":99999999999999999999}') == {"n": 1e20}  # what orjson alone would have published
    with pytest.raises(Unrepresentable, match="beyond 64 bits"):
        faithful.loads(b'{"n":99999999999999999999}')
    with pytest.raises(Unrepresentable, match="beyond 64 bits"):
        faithful.loads(b'{"n":-9223372036854775809}')
    assert faithful.loads(b'{"n":1.8e19,"m":-9.2e18}') == {"n": 1.8e19, "m": -9.2e18}  # floats, within the bounds
    with pytest.raises(Unrepresentable, match="number beyond 64 bits"):
        faithful.loads(b'{"n":1e20}')  # a float beyond them, which JSONB would turn into an integer
    assert faithful.loads(b'{"n":18446744073709551615}') == {"n": 2**64 - 1}
    with pytest.raises(Unrepresentable, match="lone surrogate"):
        faithful.loads(b'{"s":"\\ud800"}')  # orjson refuses it as "not JSON"; the check names it
    with pytest.raises(Unrepresentable, match="deeper than 32"):
        faithful.loads(b"[" * 5000 + b"]" * 5000)  # deeper than Python's parser recurses
    for not_json in (b"{oops", b"\xff{}", b'"\xed\xa0\x80"'):  # the last: a surrogate encoded in UTF-8 (CESU-8)
        with pytest.raises(ValueError):
            faithful.loads(not_json)


# --------------------------------------------------------------------------------------------
# HTTP, in-process, on SQLite + the embedded log and on Postgres + Redis
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def app_settings(backend: tuple[str, str | None], make_settings: Callable[..., Settings]) -> Settings:
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    return make_settings(database_url=database_url, redis_url=redis_url)


async def state(app: Any) -> tuple[dict[str, int], str]:
    """Rows per table and the log's head, once the outbox has published what it holds."""
    services = app.state.services
    tables = [table for table in Base.metadata.sorted_tables if table.name not in {"leases"}]

    async def counts() -> dict[str, int]:
        async with services.db() as session:
            return {t.name: (await session.execute(select(func.count()).select_from(t))).scalar_one() for t in tables}

    await eventually(lambda: _outbox_empty(counts), timeout=10)
    rows = await counts()
    return {name: n for name, n in rows.items() if name not in UNWATCHED_TABLES}, await services.log.head()


async def _outbox_empty(counts: Callable[[], Any]) -> bool:
    return (await counts()).get("outbox", 0) == 0


def body_operations(app: Any) -> list[tuple[str, str]]:
    """Every operation of the app's own OpenAPI document that takes a JSON body."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), path))
    return found


def headers_for(method: str, path: str) -> dict[str, str]:
    return {**JSON, **auth(service_token() if (method, path) in SERVICE_ROUTES else token())}


async def test_every_route_with_a_body_refuses_what_it_cannot_store(app_settings: Settings) -> None:
    async with running_app(app_settings) as (app, client):
        operations = body_operations(app)
        # the publishing, notification and push routes at least (any route added later is swept too)
        assert {("POST", "/v1/events"), ("POST", "/v1/notifications"), ("PUT", "/v1/notifications/preferences"),
                ("POST", "/v1/push/subscriptions")} <= set(operations), operations
        before = await state(app)
        for method, path in operations:
            url = re.sub(r"\{[^}]+\}", "x1", path)
            for case, member in ODD_MEMBERS.items():
                response = await client.request(method, url, content=f'{{"x":{{{member}}}}}'.encode(),
                                                headers=headers_for(method, path))
                refused(response, expect=words(case))
            refused(await client.request(method, url, content=nest(33).encode(), headers=headers_for(method, path)),
                    expect="deeper than 32")
            # 32 deep is not refused for its depth (the schema may still refuse it)
            response = await client.request(method, url, content=nest(32).encode(), headers=headers_for(method, path))
            assert response.status_code != 500 and response.json().get("code") != "unrepresentable_json", response.text
            # sent as another type: refused by the schema, which echoes the body as text; bytes that are not UTF-8
            # cannot be (they were a 500)
            plain = {**headers_for(method, path), "Content-Type": "text/plain"}
            refused(await client.request(method, url, content=b'{"x":"\xff\xfe"}', headers=plain), expect="UTF-8")
            response = await client.request(method, url, content=b'{"x":"ok"}', headers=plain)
            assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
        assert await state(app) == before


async def test_publish_and_create_refuse_unrepresentable_data_and_store_nothing(app_settings: Settings) -> None:
    publisher = {**JSON, **auth(service_token())}
    async with running_app(app_settings) as (app, client):
        before = await state(app)
        for case, member in {**ODD_MEMBERS, "nesting 33 deep": '"deep":' + nest(31)}.items():
            data = "{" + member + "}"  # data is at level 2: a member's value nested 31 deep reaches level 33
            expect = "deeper than 32" if "nesting" in case else words(case)
            refused(await client.post("/v1/events", content=event_body(data), headers=publisher), expect=expect)
            refused(await client.post("/v1/notifications", content=notification_body(data), headers=publisher),
                    expect=expect)
            assert (await client.post("/v1/notifications", content=notification_body(data, idempotency_key='"k1"'),
                                      headers=publisher)).status_code == 422
        assert await state(app) == before  # no row, no event

        # the edges are taken, exactly as sent
        log = app.state.services.log
        for case, (data, value) in EDGES.items():
            response = await client.post("/v1/events", content=event_body(data), headers=publisher)
            assert response.status_code == 202, (case, response.text)
            event = (await log.read("t1", "analysis:a1", ZERO, response.json()["id"], 10_000))[-1]
            assert orjson.loads(event.data) == value, case
            response = await client.post("/v1/notifications", content=notification_body(data), headers=publisher)
            assert response.status_code == 201, (case, response.text)
            assert response.json()["data"] == value, case
        listed = [item["data"] for item in (await client.get("/v1/notifications", headers=auth(token()))).json()["items"]]
        # read back from the database as sent (Postgres gives 1.8e19 back as 18000000000000000000: the same number)
        assert len(listed) == len(EDGES) and all(value in listed for _, value in EDGES.values()), listed


async def test_every_field_and_key_of_a_body_is_held_to_it(app_settings: Settings) -> None:
    """Not only free-form data: a title, a tag, an action's label, a preference's category, a push
    endpoint, bulk ids, a snooze time. Each would otherwise reach the database (a 500 on Postgres)
    or a validation error that cannot be encoded (a 500 on both)."""
    user = {**JSON, **auth(token())}
    publisher = {**JSON, **auth(service_token())}
    browser = Browser()
    async with running_app(app_settings) as (app, client):
        created = await client.post("/v1/notifications", content=notification_body(), headers=publisher)
        assert created.status_code == 201
        note = created.json()["id"]
        assert (await client.put("/v1/notifications/preferences", json={"categories": {"mentions": {"web_push": False}}},
                                 headers=user)).status_code == 200
        before = await state(app)
        preferences = (await client.get("/v1/notifications/preferences", headers=user)).json()
        subscription = browser.subscription("https://fcm.googleapis.com/fcm/send/abc")
        for text, expect in (('"a\\u0000b"', "NUL"), ('"\\ud800"', "lone surrogate")):
            endpoint = json.dumps(subscription["endpoint"])[:-1] + text[1:]  # the same URL, with it at the end
            attempts: list[tuple[str, str, str, dict[str, str]]] = [
                ("POST", "/v1/notifications", notification_body(title=text).decode(), publisher),
                ("POST", "/v1/notifications", notification_body(message=text).decode(), publisher),
                ("POST", "/v1/notifications", notification_body(category=text).decode(), publisher),
                ("POST", "/v1/notifications", notification_body(tags=f"[{text}]").decode(), publisher),
                ("POST", "/v1/notifications", notification_body(actions=f'[{{"id":"a","label":{text}}}]').decode(),
                 publisher),
                ("POST", "/v1/notifications", notification_body(idempotency_key=text).decode(), publisher),
                ("PUT", "/v1/notifications/preferences", f'{{"categories":{{{text}:{{"web_push":false}}}}}}', user),
                ("PUT", "/v1/notifications/preferences", f'{{"categories":{{"mentions":{{{text}:false}}}}}}', user),
                ("POST", "/v1/push/subscriptions",
                 json.dumps(subscription).replace(json.dumps(subscription["endpoint"]), endpoint), user),
                ("POST", "/v1/push/subscriptions",
                 json.dumps(subscription).replace(json.dumps(subscription["keys"]["auth"]), text), user),
                ("POST", "/v1/notifications/bulk", f'{{"ids":["{note}",{text}],"action":"read"}}', user),
                ("POST", "/v1/notifications/archive-all", f'{{"status":{text}}}', user),
                ("POST", f"/v1/notifications/{note}/snooze", f'{{"until":{text}}}', user),
            ]
            for method, path, body, headers in attempts:
                response = await client.request(method, path, content=body.encode(), headers=headers)
                refused(response, expect=expect)
        assert await state(app) == before
        assert (await client.get("/v1/notifications/preferences", headers=user)).json() == preferences
        listed = (await client.get("/v1/notifications", headers=user)).json()["items"]
        assert [(n["id"], n["read_at"], n["archived_at"], n["snoozed_until"]) for n in listed] == [(note, None, None, None)]


async def test_parameters_with_a_nul_are_a_422_not_a_500(app_settings: Settings) -> None:
    user = auth(token())
    async with running_app(app_settings) as (app, client):
        created = await client.post("/v1/notifications", content=notification_body(), headers={**JSON, **auth(service_token())})
        note = created.json()["id"]
        before = await state(app)
        for url in ("/v1/notifications?category=%00", "/v1/notifications?cursor=%00", "/v1/notifications?tag=a%00",
                    "/v1/notifications?status=all&cursor=x%00y"):
            refused(await client.get(url, headers=user), code="unrepresentable_parameter", expect="NUL")
        for method, url in (("POST", "/v1/notifications/%00/read"), ("POST", f"/v1/notifications/{note}%00/archive"),
                            ("DELETE", "/v1/notifications/%00"), ("POST", f"/v1/notifications/{note}/actions/a%00"),
                            ("DELETE", "/v1/push/subscriptions?endpoint=https://fcm.googleapis.com/%00")):
            refused(await client.request(method, url, headers=user), code="unrepresentable_parameter", expect="NUL")
        # a percent-encoded surrogate is decoded with replacement characters: an ordinary bad cursor
        response = await client.get("/v1/notifications?cursor=%ED%A0%80", headers=user)
        assert response.status_code == 400 and response.json()["code"] == "bad_cursor"
        assert await state(app) == before
        assert (await client.get("/v1/notifications", headers=user)).json()["items"][0]["read_at"] is None


# --------------------------------------------------------------------------------------------
# HTTP through a live server (uvicorn, real sockets), on SQLite and on Postgres, both with Redis
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def live_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of a live server: a SQLite file of this test's, or the module's Postgres database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"


async def live_server_on(live_servers: Callable[..., LiveServer], url: str, **env: str) -> LiveServer:
    await migrate_and_empty(url)
    return await asyncio.to_thread(live_servers, DATABASE_URL=url, **env)  # it blocks until the server answers


async def test_over_real_http_every_case_is_a_422_and_nothing_is_kept(
        live_servers: Callable[..., LiveServer], redis_url: str, live_database: str) -> None:
    live = await live_server_on(live_servers, live_database)
    user = auth(token(channels=["analysis:*"]))
    publisher = {**JSON, **auth(service_token())}
    async with httpx.AsyncClient(base_url=live.url, timeout=20, trust_env=False) as http:

        async def head() -> str:
            return (await http.get("/v1/poll", params={"timeout": 0, "channels": "analysis:a1"}, headers=user)).json()["cursor"]

        start = await head()
        cases = {**ODD_MEMBERS, "nesting 33 deep": '"deep":' + nest(31)}
        for case, member in cases.items():
            data = "{" + member + "}"
            expect = "deeper than 32" if "nesting" in case else words(case)
            refused(await http.post("/v1/events", content=event_body(data), headers=publisher), expect=expect)
            refused(await http.post("/v1/notifications", content=notification_body(data), headers=publisher), expect=expect)
            refused(await http.put("/v1/notifications/preferences", content=f'{{"categories":{{}},"x":{data}}}'.encode(),
                                   headers={**JSON, **user}), expect=expect)
            refused(await http.post("/v1/push/subscriptions", content=f'{{"endpoint":"https://fcm.googleapis.com/x",'
                                    f'"keys":{{"p256dh":"a","auth":"b"}},"x":{data}}}'.encode(), headers={**JSON, **user}),
                    expect=expect)
        refused(await http.get("/v1/notifications?category=%00", headers=user), code="unrepresentable_parameter")
        refused(await http.post("/v1/notifications/%00/read", headers=user), code="unrepresentable_parameter")
        # the stream routes: SSE goes through the app's routes, polling past them (its own checks: a bad channel)
        refused(await http.get("/v1/sse?channels=analysis:a%00", headers=user), code="unrepresentable_parameter")
        response = await http.get("/v1/poll?timeout=0&channels=analysis:a%00", headers=user)
        assert response.status_code == 400 and response.json()["code"] == "bad_channel"

        assert await head() == start  # nothing published
        assert (await http.get("/v1/notifications", headers=user)).json()["items"] == []
        assert (await http.get("/v1/notifications/preferences", headers=user)).json()["categories"] == {}
        assert (await http.get("/v1/push/subscriptions", headers=user)).json()["items"] == []

        for case, (data, value) in EDGES.items():  # and the edges go through, exactly as sent
            response = await http.post("/v1/notifications", content=notification_body(data), headers=publisher)
            assert response.status_code == 201 and response.json()["data"] == value, (case, response.text)
            response = await http.post("/v1/events", content=event_body(data), headers=publisher)
            assert response.status_code == 202, (case, response.text)
        polled = (await http.get("/v1/poll", params={"timeout": 0, "channels": "analysis:a1", "since": start},
                                 headers=user)).json()["events"]
        assert [e["data"] for e in polled if e["channel"] == "analysis:a1"] == [value for _, value in EDGES.values()]
    assert "Traceback" not in live.logs()


# --------------------------------------------------------------------------------------------
# the WebSocket: an error frame per op, and the connection stays
# --------------------------------------------------------------------------------------------


def frames_for(op: str) -> dict[str, str]:
    """For one op: each odd member as an extra field, and in the op's own field where it has one."""
    own = {"subscribe": "channel", "unsubscribe": "channel", "presence": "channel", "refresh": "token", "ack": "id"}
    frames = {case: f'{{"op":"{op}",{member}}}' for case, member in ODD_MEMBERS.items()}
    frames["nesting 33 deep"] = f'{{"op":"{op}","x":{nest(32)}}}'  # the frame is level 1
    if op in own:
        frames[f"NUL in {own[op]}"] = f'{{"op":"{op}","{own[op]}":"repository:r\\u0000"}}'
        frames[f"lone surrogate in {own[op]}"] = f'{{"op":"{op}","{own[op]}":"repository:r\\ud800"}}'
        frames[f"integer 10^20 as {own[op]}"] = f'{{"op":"{op}","{own[op]}":99999999999999999999}}'
    return frames


async def test_every_websocket_op_answers_an_error_frame_and_the_connection_stays(
        live_servers: Callable[..., LiveServer], redis_url: str, tmp_path: Path) -> None:
    server = await live_server_on(live_servers, f"sqlite+aiosqlite:///{tmp_path / 'live.db'}", WS_MESSAGES_PER_SECOND="0")
    async with await WS.connect(server.ws_url, token(channels=["analysis:*", "repository:*"]),
                                channels="analysis:a1") as ws:
        await ws.subscribed({"user:u1", "tenant:t1", "analysis:a1"})
        assert set(CLIENT_OPS) == {"subscribe", "unsubscribe", "ping", "refresh", "ack", "presence"}
        for op in CLIENT_OPS:
            for case, frame in frames_for(op).items():
                await ws.send(frame)
                answer = await ws.expect("error")
                assert answer["code"] == "unrepresentable_json", (op, case, answer)
                await ws.roundtrip()  # still open, still answering, in order
        # 32 deep is a frame like any other
        await ws.send(f'{{"op":"ping","x":{nest(31)}}}')
        await ws.expect("pong")
        # and the connection still delivers what is published, after all of it
        async with httpx.AsyncClient(base_url=server.url, timeout=20, trust_env=False) as http:
            response = await http.post("/v1/events", content=event_body('{"n":18446744073709551615}'),
                                       headers={**JSON, **auth(service_token())})
            assert response.status_code == 202
        [event] = await ws.events(1)
        assert event["data"] == {"n": 18446744073709551615} and event["id"] == response.json()["id"]
    assert "Traceback" not in server.logs()


# --------------------------------------------------------------------------------------------
# the worker ingest stream
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def ingest_log(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[RedisEventLog]:
    log_settings = make_settings(redis_url=redis_url)
    redis = create_redis(log_settings)
    assert redis is not None
    event_log = create_event_log(log_settings, redis)
    assert isinstance(event_log, RedisEventLog)
    try:
        await event_log.start()
        yield event_log
        await event_log.close()
    finally:
        await redis.aclose()


@pytest.fixture
def worker_redis(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_url)
    yield client
    client.close()


def malformed_count() -> float:
    return REGISTRY.get_sample_value("realtime_malformed_entries_total", {"source": "ingest"}) or 0.0


async def test_ingest_keeps_unrepresentable_entries_aside_and_delivers_the_rest(
        ingest_log: RedisEventLog, worker_redis: sync_redis.Redis, prefix: str) -> None:
    ingest = Ingest(ingest_log.redis, ingest_log, keys=Keys(prefix), max_event_bytes=65536, claim_idle_ms=100)
    await ingest.start()
    try:
        stream = f"{prefix}:ingest"
        before = malformed_count()

        def entry(data: str, **extra: str) -> bytes:
            return worker_redis.xadd(stream, {"tenant": "t1", "channel": "analysis:a1", "type": "x.y", "data": data, **extra})

        entry('{"step":1}')
        bad: dict[bytes, str] = {}
        for case, member in ODD_MEMBERS.items():
            bad[entry("{" + member + "}")] = words(case)
        bad[entry("{\"deep\":" + nest(31) + "}")] = "deeper than 32"  # data is level 2, as in an HTTP body
        bad[entry("[" * 3000 + "]" * 3000)] = "deeper than 32"  # deeper than Python's parser recurses
        bad[entry('{"step":0}', idempotency_key="k\x00")] = "NUL"
        for _, (data, _value) in EDGES.items():
            entry(data)
        entry('{"step":2}')

        expected = [{"step": 1}] + [value for _, value in EDGES.values()] + [{"step": 2}]

        async def delivered() -> list[Any] | None:
            events = await ingest_log.read("t1", "analysis:a1", ZERO, await ingest_log.head(), 10_000)
            return [orjson.loads(e.data) for e in events] if len(events) >= len(expected) else None

        assert await eventually(delivered, timeout=10) == expected  # in order, exactly as sent, nothing else

        async def set_aside() -> list[Any] | None:
            kept = await ingest_log.redis.xrange(f"{prefix}:ingest:rejected")
            return kept if len(kept) >= len(bad) else None

        kept = await eventually(set_aside, timeout=10)
        assert isinstance(kept, list) and len(kept) == len(bad)
        for _, fields in kept:
            reason = fields[b"reason"].decode()
            assert bad[fields[b"entry_id"]] in reason, reason
            assert re.search(r"\$\.(data|idempotency_key)\b", reason), reason  # where, as for an HTTP body
        assert malformed_count() - before == len(bad)

        async def drained() -> bool:
            pending = await ingest_log.redis.xpending(stream, GROUP)
            return await ingest_log.redis.xlen(stream) == 0 and pending["pending"] == 0

        await eventually(drained, timeout=10)
        assert ingest._task is not None and not ingest._task.done()  # the drainer lives on
        entry('{"step":3}')  # and keeps draining
        assert (await eventually(lambda: _last_data(ingest_log), timeout=10)) == {"step": 3}
    finally:
        await ingest.stop()


async def _last_data(log: RedisEventLog) -> Any:
    events = await log.read("t1", "analysis:a1", ZERO, await log.head(), 10_000)
    last = orjson.loads(events[-1].data) if events else None
    return last if last == {"step": 3} else None
