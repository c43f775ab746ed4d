"""Real peers for live tests: an HTTP server in a thread (an authorization hook, a JWKS
endpoint), a WebSocket client that reads JSON frames into a queue, and a TCP proxy in front of
Redis that can be told to stop forwarding (so a server's Redis pool runs dry on demand).

Everything here talks over real sockets to `python -m app serve` subprocesses (conftest's
`live_servers`); nothing imports the service's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

WAIT = 20.0  # the longest one condition may take before a test fails (a deadline, never a timing assertion)


# --------------------------------------------------------------------------------------------
# an HTTP server in a thread
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


DROP = object()  # a handler's answer: close the connection without a response


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a dropped connection is what some tests ask for


class LocalHTTPServer:
    """`answer(request)` -> (status, body) or DROP, called on the server's own threads; every
    request is recorded in `requests`. Start with `with LocalHTTPServer(answer) as server:`."""

    def __init__(self, answer: Callable[[Request], tuple[int, Any] | object]) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length) if length else b"")
                with outer._lock:
                    outer.requests.append(request)
                result = outer.answer(request)
                if result is DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, body = result  # type: ignore[misc]
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{self.port}", daemon=True)

    def calls(self, predicate: Callable[[Request], bool] = lambda r: True) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]

    def __enter__(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------------------------
# a WebSocket client
# --------------------------------------------------------------------------------------------


class Closed:
    """The end of a WebSocket stream, with the close code the client saw."""

    def __init__(self, code: int | None) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Closed({self.code})"


class WS:
    """A WebSocket client whose JSON frames are read in the background into a queue."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base_ws_url: str, tok: str, **params: Any) -> WS:
        """Connect to /v1/ws with the token in the header; `connect_kwargs` go to websockets."""
        kwargs = params.pop("connect_kwargs", {})
        query = {k: v for k, v in params.items() if v is not None}
        url = f"{base_ws_url}/v1/ws" + (f"?{urlencode(query)}" if query else "")
        conn = await connect(url, additional_headers={"Authorization": f"Bearer {tok}"}, proxy=None,
                             open_timeout=WAIT, **kwargs)
        return cls(conn)

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.frames.put_nowait(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.frames.put_nowait(Closed(self.conn.close_code))

    async def next(self, timeout: float = WAIT) -> Any:
        try:
            return await asyncio.wait_for(self.frames.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no WebSocket frame within {timeout}s") from None

    async def send(self, frame: Any) -> None:
        await self.conn.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def expect(self, op: str) -> dict:
        frame = await self.next()
        assert isinstance(frame, dict) and frame.get("op") == op, f"expected op {op!r}, got {frame!r}"
        return frame

    async def subscribed(self, channels: set[str]) -> None:
        """Wait for the `subscribed` frames of exactly these channels (any order)."""
        seen: set[str] = set()
        while seen != channels:
            frame = await self.expect("subscribed")
            seen.add(frame["channel"])

    async def events(self, n: int) -> list[dict]:
        """The next n frames, each of which must be an event envelope (presence events skipped)."""
        out: list[dict] = []
        while len(out) < n:
            frame = await self.next()
            assert isinstance(frame, dict) and "op" not in frame, f"after {len(out)} of {n} events: {frame!r}"
            if not str(frame.get("type", "")).startswith("presence."):
                out.append(frame)
        return out

    async def events_until(self, last_id: str) -> list[dict]:
        """Event envelopes (presence events skipped) up to and including the one with `last_id`."""
        out: list[dict] = []
        while not out or out[-1]["id"] != last_id:
            frame = await self.next()
            assert isinstance(frame, dict) and "op" not in frame, f"after {[e['id'] for e in out]}: {frame!r}"
            if not str(frame.get("type", "")).startswith("presence."):
                out.append(frame)
        return out

    async def roundtrip(self) -> None:
        """A ping answered: every frame sent before it has been handled (frames are handled in order)."""
        await self.send({"op": "ping"})
        await self.expect("pong")

    async def aclose(self) -> None:
        await self.conn.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)

    async def __aenter__(self) -> WS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------------------------
# a TCP proxy that can stop forwarding
# --------------------------------------------------------------------------------------------


class StallingProxy:
    """Forwards 127.0.0.1:<port> to `target`; `stall()` stops forwarding in both directions (bytes
    wait, connections stay open: the peer looks alive but answers nothing), `resume()` goes on.
    Threads, not the test's event loop: a server starting up (a blocking call in the test) needs it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([source], [], [], 0.2)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.2):  # stalled: hold the bytes
                    if self._stop.is_set():
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._flowing.set()
        self._listener.close()
        self._thread.join(5)
        with self._lock:
            for sock in self._sockets:
                sock.close()
