"""The SSE response's per-send timeout (app/transports/sse.py `_EventSource`): free when the send
does not wait, and still the stock SendTimeoutError / cancellation behaviour when it does."""

from __future__ import annotations

import asyncio

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

    task = asyncio.ensure_future(_response(10)._send_with_timeout(stalled, {"type": "http.response.body", "body": b"", "more_body": True}))
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
