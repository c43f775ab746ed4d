"""The WebSocket `ack` op: `{"op":"ack","id":I}` moves the `client_id` cursor to I (README, wire
protocol), never past what the connection was given; a bad id is answered with an error frame.

Seen from outside: a reconnect with the same client_id and no `since` resumes after the stored
cursor. To see the ack's own effect, nothing else may write that cursor: CURSOR_FLUSH_SECONDS is
set beyond any run (no debounced save while streaming) and the first process is killed (SIGKILL:
no save when the connection ends), so what a second process resumes from is what the ack stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, service_token, token
from tests.live_support import WAIT, WS

NO_DEBOUNCED_SAVE = {"CURSOR_FLUSH_SECONDS": "1000000000"}


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


async def publish(http: httpx.AsyncClient, server: LiveServer, channel: str, data: dict) -> str:
    body = {"tenant": "t1", "channel": channel, "type": "test.event", "data": data}
    response = await http.post(f"{server.url}/v1/events", json=body, headers={"Authorization": f"Bearer {service_token('t1')}"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def beyond(event_id: str) -> str:
    """An id later than `event_id` (a second later) that no connection was given."""
    ms, _ = event_id.split("-")
    return f"{int(ms) + 1000}-0"


async def test_ack_moves_the_stored_cursor_and_a_reconnect_resumes_after_it(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    first = live_servers(**NO_DEBOUNCED_SAVE)
    tok = token("u1", "t1")
    ws = await WS.connect(first.ws_url, tok, client_id="c1")
    try:
        await ws.subscribed({"user:u1", "tenant:t1"})
        ids = [await publish(http, first, "user:u1", {"n": n}) for n in range(4)]
        assert [e["id"] for e in await ws.events(4)] == ids

        await ws.send({"op": "ack", "id": ids[1]})  # processed up to the second
        await ws.send({"op": "ack", "id": beyond(ids[3])})  # past what was delivered: ignored
        await ws.roundtrip()  # both acks handled (frames are handled in order)
    finally:
        first.stop(kill=True)  # no clean close: nothing but the ack wrote the cursor
        await ws.aclose()

    second = live_servers(**NO_DEBOUNCED_SAVE)  # same Redis, same prefix: the same stored cursors
    async with await WS.connect(second.ws_url, tok, client_id="c1") as resumed:
        await resumed.subscribed({"user:u1", "tenant:t1"})
        live = await publish(http, second, "user:u1", {"n": "live"})
        assert [e["id"] for e in await resumed.events_until(live)] == [ids[2], ids[3], live]


async def test_an_ack_with_a_bad_id_is_an_error_frame_and_the_connection_stays(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    server = live_servers()
    async with await WS.connect(server.ws_url, token("u1", "t1"), client_id="c1") as ws:
        await ws.subscribed({"user:u1", "tenant:t1"})
        await ws.send({"op": "ack", "id": "not-a-cursor"})
        error = await ws.expect("error")
        assert error["code"] == "bad_cursor", error
        for bad in (12345, None, ["1-0"]):
            await ws.send({"op": "ack", "id": bad})
            error = await ws.expect("error")
            assert error["code"] == "bad_frame", error
        await ws.send({"op": "ack"})
        assert (await ws.expect("error"))["code"] == "bad_frame"
        # the connection is still live
        event_id = await publish(http, server, "user:u1", {"after": "errors"})
        assert [e["id"] for e in await ws.events(1)] == [event_id]
