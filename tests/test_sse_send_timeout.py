"""The SSE response's per-send timeout (app/transports/sse.py `_EventSource`): free when the send
does not wait, and still the stock SendTimeoutError / cancellation behaviour when it does."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from sse_starlette.sse import SendTimeoutError

from app.transports.sse import _EventSource


async def _empty():
    if False:  # pragma: no cover
        yield b""


def _response(timeout: float | None) -> _EventSource:
    return _EventSource(_empty(), send_timeout=timeout, ping=0)


async def test_a_send_that_does_not_wait_is_sent() -> None:
    sent = []

    async def send(message):
        sent.append(message)

    await _response(0.05)._send_with_timeout(send, {"type": "http.response.body", "body": b"x", "more_body": True})
    assert sent == [{"type": "http.response.body", "body": b"x", "more_body": True}]


async def test_a_send_that_waits_less_than_the_timeout_completes_with_its_result() -> None:
    order = []

    async def send(message):
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        order.append(message["body"])

    await _response(1.0)._send_with_timeout(send, {"type": "http.response.body", "body": b"late", "more_body": True})
    assert order == [b"late"]


async def test_a_send_that_waits_longer_than_the_timeout_raises_send_timeout() -> None:
    cleaned = []

    async def send(message):
        try:
            await asyncio.sleep(5)
        finally:
            cleaned.append(True)

    with pytest.raises(SendTimeoutError):
        await _response(0.05)._send_with_timeout(send, {"type": "http.response.body", "body": b"x", "more_body": True})
    assert cleaned == [True]  # the stalled send was cancelled, not leaked


async def test_errors_and_outside_cancellation_reach_the_caller() -> None:
    async def failing(message):
        raise OSError("gone")

    with pytest.raises(OSError):
        await _response(1.0)._send_with_timeout(failing, {"type": "http.response.body", "body": b"", "more_body": True})

    async def failing_later(message):
        await asyncio.sleep(0)
        raise OSError("gone later")

    with pytest.raises(OSError):
        await _response(1.0)._send_with_timeout(failing_later, {"type": "http.response.body", "body": b"", "more_body": True})

    started = asyncio.Event()

    async def stalled(message):
        started.set()
        await asyncio.sleep(5)

    chunk = {"type": "http.response.body", "body": b"", "more_body": True}
    task = asyncio.ensure_future(_response(10)._send_with_timeout(stalled, chunk))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_timeout_sends_directly() -> None:
    sent = []

    async def send(message):
        await asyncio.sleep(0)
        sent.append(message)

    await _response(None)._send_with_timeout(send, {"type": "x"})
    assert sent == [{"type": "x"}]


# --- through the library's own response: a release that stops calling the override fails here ---


def _scope() -> dict:
    return {"type": "http", "method": "GET", "path": "/v1/sse", "headers": [], "query_string": b""}


async def _never_disconnects() -> dict:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def _chunks(n: int):
    for i in range(n):
        yield b"data: %d\n\n" % i


TIMEOUT = 0.0731  # an odd value, to tell this response's timers from any other


class _Spies:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0  # _send_with_timeout calls made by the library
        self.scopes = 0  # timers armed with this response's send timeout
        override = _EventSource._send_with_timeout
        move_on_after = anyio.move_on_after

        async def counted(response: _EventSource, send, message) -> None:
            self.calls += 1
            await override(response, send, message)

        def timer(delay, *args, **kwargs):
            if delay == TIMEOUT:
                self.scopes += 1
            return move_on_after(delay, *args, **kwargs)

        monkeypatch.setattr(_EventSource, "_send_with_timeout", counted)
        monkeypatch.setattr(anyio, "move_on_after", timer)


async def test_the_real_response_sends_through_the_override_without_a_timer_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    spies = _Spies(monkeypatch)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await _EventSource(_chunks(30), send_timeout=TIMEOUT, ping=0)(_scope(), _never_disconnects, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert bodies == [b"data: %d\n\n" % i for i in range(30)]
    assert spies.calls >= 30  # every chunk went through our override
    assert spies.scopes == 0  # and none paid for a timer: the fast path is live


async def test_the_real_response_ends_a_stream_whose_client_stopped_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    spies = _Spies(monkeypatch)
    closed = asyncio.Event()

    async def stream():
        try:
            for i in range(1000):
                yield b"data: %d\n\n" % i
        finally:
            closed.set()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message["body"] == b"data: 3\n\n":
            await asyncio.sleep(30)  # the socket's buffer is full from here on

    with pytest.raises(SendTimeoutError):
        await asyncio.wait_for(_EventSource(stream(), send_timeout=TIMEOUT, ping=0)(_scope(), _never_disconnects, send), 10)
    assert closed.is_set()  # the generator was closed, its clean-up ran
    assert spies.scopes == 1  # the one send that waited armed the timer
