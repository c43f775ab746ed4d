"""Presence and live state (CONTRACT section 9): typed events validated on publish, a late
subscriber sees the current state at once on every transport, and who is viewing a repository
is known across processes, including when a process dies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.settings import Settings
from tests.conftest import LiveServer, auth, eventually, running_app, service_token, token

WAIT = 15.0


async def post_event(client: httpx.AsyncClient, channel: str, type_: str, data: dict, tenant: str = "t1") -> httpx.Response:
    return await client.post("/v1/events", json={"tenant": tenant, "channel": channel, "type": type_, "data": data},
                             headers=auth(service_token(tenant)))


# --- typed events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("analysis.progress", {}),
        ("analysis.progress", {"progress": 101}),
        ("analysis.progress", {"progress": -1}),
        ("analysis.progress", {"progress": "50"}),
        ("analysis.progress", {"progress": True}),
        ("refactoring.status", {"status": "done"}),
        ("system.alert", {"severity": "apocalyptic"}),
        ("system.alert", {}),
    ],
)
async def test_typed_events_are_validated(settings: Settings, type_: str, data: dict) -> None:
    async with running_app(settings) as (_, client):
        response = await post_event(client, "analysis:a1", type_, data)
        assert response.status_code == 422 and response.json()["code"] == "invalid_event", response.text


async def test_progress_never_moves_backwards(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await post_event(client, "analysis:a1", "analysis.progress", {"progress": 30})).status_code == 202
        assert (await post_event(client, "analysis:a1", "analysis.progress", {"progress": 70})).status_code == 202
        assert (await post_event(client, "analysis:a1", "analysis.progress", {"progress": 70})).status_code == 202
        refused = await post_event(client, "analysis:a1", "analysis.progress", {"progress": 40})
        assert refused.status_code == 409 and refused.json()["code"] == "conflict"
        # another analysis, and the same analysis id in another tenant, have their own progress
        assert (await post_event(client, "analysis:a2", "analysis.progress", {"progress": 5})).status_code == 202
        assert (await post_event(client, "analysis:a1", "analysis.progress", {"progress": 5}, tenant="t2")).status_code == 202


async def test_job_status_moves_only_forward(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        for status in ("queued", "running"):
            assert (await post_event(client, "job:j1", "refactoring.status", {"status": status})).status_code == 202
        assert (await post_event(client, "job:j1", "refactoring.status", {"status": "queued"})).status_code == 409
        assert (await post_event(client, "job:j1", "refactoring.status", {"status": "completed"})).status_code == 202
        assert (await post_event(client, "job:j1", "refactoring.status", {"status": "completed"})).status_code == 202
        for status in ("failed", "running", "cancelled"):  # out of a final state
            assert (await post_event(client, "job:j1", "refactoring.status", {"status": status})).status_code == 409
        assert (await post_event(client, "job:j2", "refactoring.status", {"status": "cancelled"})).status_code == 202


async def test_free_form_types_are_not_constrained(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        assert (await post_event(client, "analysis:a1", "analysis.note", {"anything": [1, 2]})).status_code == 202
        assert (await post_event(client, "tenant:t1", "system.alert", {"severity": "critical"})).status_code == 202


# --- live state -----------------------------------------------------------------------------


async def test_late_poller_gets_the_latest_state_first(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        for progress in (10, 40, 70):
            await post_event(client, "analysis:a1", "analysis.progress", {"progress": progress})
        await post_event(client, "analysis:a1", "analysis.note", {"text": "scanning"})
        viewer = token(channels=["analysis:*"])
        late = (await client.get("/v1/poll", params={"channels": "analysis:a1"}, headers=auth(viewer))).json()
        assert [(e["type"], e["data"], e.get("snapshot")) for e in late["events"]] == [
            ("analysis.progress", {"progress": 70}, True),
            ("analysis.note", {"text": "scanning"}, True),
        ]
        assert late["reset"] is False
        # the cursor is the head, not a snapshot's id: resuming from it gets what comes next only
        await post_event(client, "analysis:a1", "analysis.progress", {"progress": 80})
        after = (await client.get("/v1/poll", params={"channels": "analysis:a1", "since": late["cursor"], "timeout": 5},
                                  headers=auth(viewer))).json()
        assert [(e["data"], "snapshot" in e) for e in after["events"]] == [({"progress": 80}, False)]


async def test_resuming_client_gets_missed_events_not_snapshots(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        viewer = token(channels=["analysis:*"])
        start = (await client.get("/v1/poll", params={"channels": "analysis:a1", "timeout": 0}, headers=auth(viewer))).json()
        for progress in (10, 20):
            await post_event(client, "analysis:a1", "analysis.progress", {"progress": progress})
        resumed = (await client.get("/v1/poll", params={"channels": "analysis:a1", "since": start["cursor"]},
                                    headers=auth(viewer))).json()
        assert [(e["data"]["progress"], "snapshot" in e) for e in resumed["events"]] == [(10, False), (20, False)]


async def test_state_is_tenant_scoped(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        await post_event(client, "analysis:a1", "analysis.progress", {"progress": 90})
        other = token("u9", "t2", channels=["analysis:*"])
        answer = (await client.get("/v1/poll", params={"channels": "analysis:a1", "timeout": 0}, headers=auth(other))).json()
        assert answer["events"] == []


# --- through real sockets: the "Done when" ------------------------------------------


async def ws_open(server: LiveServer, tok: str, **params: str) -> ClientConnection:
    query = "&".join(f"{k}={v}" for k, v in {"access_token": tok, **params}.items())
    return await connect(f"{server.ws_url}/v1/ws?{query}")


async def ws_until(ws: ClientConnection, predicate: Any, timeout: float = WAIT) -> dict:
    """Frames until one matches (earlier ones are dropped); fails the test on a hang."""

    async def read() -> dict:
        while True:
            frame = json.loads(await ws.recv())
            if predicate(frame):
                return frame

    return await asyncio.wait_for(read(), timeout)


async def bob_connections(client: httpx.AsyncClient, server: LiveServer, tok: str, want: int) -> bool:
    """Whether GET /v1/presence lists bob on repository:r1 with `want` connections."""
    users = (await client.get(f"{server.url}/v1/presence/repository:r1", headers=auth(tok))).json()["users"]
    return [u["connections"] for u in users if u["user_id"] == "bob"] == [want]


async def presence_until_event(ws: ClientConnection, event_id: str) -> list[dict]:
    """The presence events that arrive on `ws` before the event `event_id` (read up to it)."""
    seen: list[dict] = []
    while True:
        frame = await ws_until(ws, lambda f: "id" in f)
        if frame["id"] == event_id:
            return seen
        if frame.get("type", "").startswith("presence."):
            seen.append(frame)


async def test_late_subscriber_sees_70_at_once_on_every_transport(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=WAIT) as client:
        for progress in (30, 70):
            assert (await post_event(client, "analysis:a1", "analysis.progress", {"progress": progress})).status_code == 202
        await post_event(client, "job:j1", "refactoring.status", {"status": "running"})
        viewer = token(channels=["analysis:*", "job:*"])

        # WebSocket
        ws = await ws_open(live_server, viewer, channels="analysis:a1,job:j1")
        first = await ws_until(ws, lambda f: "id" in f)
        assert (first["data"], first["snapshot"]) == ({"progress": 70}, True)
        second = await ws_until(ws, lambda f: "id" in f)
        assert (second["data"], second["snapshot"]) == ({"status": "running"}, True)
        await ws.close()

        # Server-Sent Events
        async with client.stream("GET", "/v1/sse", params={"channels": "analysis:a1"}, headers=auth(viewer)) as stream:
            data_lines = (line async for line in stream.aiter_lines() if line.startswith("data: "))
            envelope = json.loads((await asyncio.wait_for(anext(data_lines), WAIT))[6:])
            assert (envelope["data"], envelope["snapshot"]) == ({"progress": 70}, True)

        # long-polling: answers at once, not after its timeout
        answer = (await client.get("/v1/poll", params={"channels": "analysis:a1", "timeout": 60}, headers=auth(viewer))).json()
        assert [(e["data"], e["snapshot"]) for e in answer["events"]] == [({"progress": 70}, True)]


async def test_two_users_in_two_processes_see_each_other_join_and_leave(live_servers: Any, redis_url: str) -> None:
    env = {"PRESENCE_TTL_SECONDS": "2", "PRESENCE_HEARTBEAT_SECONDS": "0.3"}
    a, b = live_servers(**env), live_servers(**env)
    alice = token("alice", channels=["repository:*"])
    bob = token("bob", channels=["repository:*"])

    ws_alice = await ws_open(a, alice, channels="repository:r1")
    await ws_until(ws_alice, lambda f: f.get("op") == "subscribed" and f["channel"] == "repository:r1")
    ws_bob = await ws_open(b, bob, channels="repository:r1")
    bob_tab2 = await ws_open(b, bob, channels="repository:r1")
    for tab in (ws_bob, bob_tab2):  # joined presence before it says subscribed
        await ws_until(tab, lambda f: f.get("op") == "subscribed" and f["channel"] == "repository:r1")

    joined = await ws_until(ws_alice, lambda f: f.get("type") == "presence.join" and f["data"]["user_id"] == "bob")
    assert joined["channel"] == "repository:r1"
    async with httpx.AsyncClient(timeout=WAIT) as client:
        await eventually(lambda: bob_connections(client, a, alice, 2), WAIT)  # both of bob's tabs registered
        for server in (a, b):  # one entry per user, whichever process answers
            users = (await client.get(f"{server.url}/v1/presence/repository:r1", headers=auth(alice))).json()["users"]
            assert sorted((u["user_id"], u["connections"]) for u in users) == [("alice", 1), ("bob", 2)]
        # another tenant's repository:r1 is another channel; no grant for it is a 403
        stranger = token("eve", "t2", channels=["repository:*"])
        assert (await client.get(f"{a.url}/v1/presence/repository:r1", headers=auth(stranger))).json()["users"] == []
        assert (await client.get(f"{a.url}/v1/presence/repository:r1", headers=auth(token("mallory")))).status_code == 403
        assert (await client.get(f"{a.url}/v1/presence/job:j1", headers=auth(token(channels=["job:*"])))).status_code == 404

    # the WebSocket op answers the same
    await ws_alice.send(json.dumps({"op": "presence", "channel": "repository:r1"}))
    answer = await ws_until(ws_alice, lambda f: f.get("op") == "presence")
    assert sorted(u["user_id"] for u in answer["users"]) == ["alice", "bob"]

    # one of bob's two tabs closing is not a leave; the last one is. Once presence counts one tab,
    # a leave (right or wrong) is decided, and its event is appended right after: a marker event
    # published then must come before any leave, and a second marker after the last tab closed
    # shows there was exactly one (also if a wrong leave were appended late)
    async with httpx.AsyncClient(base_url=a.url, timeout=WAIT) as client:
        await bob_tab2.close()
        await eventually(lambda: bob_connections(client, a, alice, 1), WAIT)
        await ws_bob.send(json.dumps({"op": "ping"}))
        await ws_until(ws_bob, lambda f: f.get("op") == "pong")  # the remaining tab is alive
        marker = (await post_event(client, "repository:r1", "test.marker", {"after": "first tab"})).json()["id"]
        before_marker = await presence_until_event(ws_alice, marker)
        assert before_marker == [], before_marker
        await ws_bob.close()
        left = await ws_until(ws_alice, lambda f: f.get("type", "").startswith("presence."))
        assert (left["type"], left["data"]) == ("presence.leave", {"user_id": "bob"})
        # and that was bob's only leave: nothing else about him until a second marker
        marker = (await post_event(client, "repository:r1", "test.marker", {"after": "last tab"})).json()["id"]
        assert await presence_until_event(ws_alice, marker) == []

    # bob comes back on B, then B dies: bob leaves presence once his entry expires
    ws_bob = await ws_open(b, bob, channels="repository:r1")
    await ws_until(ws_alice, lambda f: f.get("type") == "presence.join" and f["data"]["user_id"] == "bob")
    b.stop(kill=True)
    left = await ws_until(ws_alice, lambda f: f.get("type", "").startswith("presence."), timeout=WAIT)
    assert (left["type"], left["data"]) == ("presence.leave", {"user_id": "bob"})
    async with httpx.AsyncClient(timeout=WAIT) as client:
        users = (await client.get(f"{a.url}/v1/presence/repository:r1", headers=auth(alice))).json()["users"]
        assert [u["user_id"] for u in users] == ["alice"]
    await ws_alice.close()
