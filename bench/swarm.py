"""The many-process side of the `scale` and `storm` scenarios: the workload model, the generator
worker (`python -m bench.swarm worker CONF`) and the publisher (`python -m bench.swarm publisher CONF`).

Each process is driven by the orchestrator (bench/scale.py) over its stdin/stdout, one JSON line
per command and per answer, and everything it does is bounded by the config's deadline.

**The model** (`build_model`, deterministic from the seed; every process rebuilds the same one):
10 tenants; users with 1-5 tabs each (uniform) until N connections (20,000 users x 1-5 tabs is
~60,000 tabs, so at N = 100,000 there are ~33,000 users: the tab distribution is kept, the
user count follows N); each tab's transport is WebSocket (85%), SSE (10%) or long-polling (5%).
Per tenant, users are grouped into repositories viewed by 1-50 users (group sizes log-uniform
on [1, 50]: most repositories have a few viewers, a few have many); every tab of a user starts
on its repository (presence). 30% of users watch an analysis, grouped the same way (1-50
watchers); a watcher's tabs subscribe to `analysis:<a>` and `job:<a>` (live state).

**A tab** (`Lineage`) keeps its cursor (the last non-snapshot id it received), and resumes with
it whenever its connection ends: WebSocket `?since=&channels=`, SSE `Last-Event-ID` and
`channels=`, long-polling `since=`; Socket.IO `{"pid","offset"}` (connection state recovery).
Like the browser client (clients/js/src/client.ts `bootstrap`) it starts with a cursor: each
worker asks `GET /v1/poll?timeout=0` for the head before a batch of connections (shared by the
batch, refreshed every 5 s) and connects with `since=` it. Reconnects follow
clients/js/src/backoff.ts: full jitter, uniform in [0, min(30 s, 0.5 s x 2^attempt)), the attempt
count reset once a connection stayed up 10 s. Where to reconnect: a random port among the ones
the orchestrator says are alive (a load balancer's health check), so the first attempts of a
storm may still hit the dead port and be refused (counted).

**Presence churn**: while traffic runs, each second ~1% of open tabs (CHURN, configurable) move
to another repository of their tenant: WebSocket sends `unsubscribe` + `subscribe`; SSE and
long-polling, which name their channels in the URL, reconnect with the new `channels=` and their
cursor (what the browser client does); Socket.IO emits `leave` + `join` (bench/servers/node).

**Accounting** (`Lineage.account`): a tab records, per channel, the windows during which every
event published on it is due: from the `subscribed` answer (WebSocket), the 200 answer (SSE,
poll) or the `join` ack (Socket.IO), to the moment it left the channel minus MARGIN (10 s: an
event published just before an unsubscribe may still be in flight, so it is neither due nor an
error if it arrives). A lost connection does not close a window: the resume must replay what
was published meanwhile. Every received event (snapshots aside) is matched by (channel, seq)
against the publisher's record: missing = due and never received; duplicate = the same (channel,
seq) received under two different ids (or twice, on Socket.IO, which has no ids); redelivered =
the same id again (at-least-once, dropped by the browser client's dedupe: reported, not a
failure); out of order = a seq lower than one received before on that channel; foreign = an
event on a channel the tab never joined.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import sys
import time
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import procstat
from bench.loadgen import PollClient, SIOClient, SSEClient, WSClient, resp

TENANTS = 10
TAB_MAX = 5
GROUP_MAX = 50
WATCH_SHARE = 0.3
TRANSPORTS = (("ws", 0.85), ("sse", 0.10), ("poll", 0.05))
CHANNEL_CLAIM = ["repository:*", "analysis:*", "job:*"]
MARGIN_NS = 10_000_000_000
STABLE_S = 10.0
BASE_S, MAX_S = 0.5, 30.0

# our envelope: {"id":..,"channel":..,"type":..,"data":{"t":..,"s":..,"q":..,"c":".."...},"ts":..[,"snapshot":true]}
_OURS = re.compile(rb'"id":"(\d+)-(\d+)","channel":"[^"]*","type":"[^"]*","data":\{"t":(\d+),"s":(-?\d+),"q":(\d+),"c":"([^"]*)"')
_SIO = re.compile(rb'\{"t":(\d+),"s":(-?\d+),"q":(\d+),"c":"([^"]*)"')
_SNAP = b'"snapshot":true'
_SUBSCRIBED = re.compile(rb'"op":"subscribed","channel":"([^"]*)"')
_PRESENCE = b'"type":"presence.'
_STATUS = re.compile(r"(?:HTTP/1\.1 |\b)([1-5]\d\d)\b")


# --------------------------------------------------------------------------------------------
# the model


@dataclass
class Model:
    n: int
    seed: int
    users: list[int] = field(default_factory=list)  # user index -> tenant
    repos: list[int] = field(default_factory=list)  # repo index -> tenant
    analyses: list[int] = field(default_factory=list)  # analysis index -> tenant
    repos_of: dict[int, list[int]] = field(default_factory=dict)
    conns: list[tuple[int, str, int, int]] = field(default_factory=list)  # (user, transport, repo, analysis or -1)

    def tenant(self, t: int) -> str:
        return f"bench{t}"

    def counts(self) -> dict[str, int]:
        out = {"users": len(self.users), "repositories": len(self.repos), "analyses": len(self.analyses)}
        for name, _ in TRANSPORTS:
            out[name] = sum(1 for c in self.conns if c[1] == name)
        return out


def _group(rng: random.Random) -> int:
    return max(1, min(GROUP_MAX, int(GROUP_MAX ** rng.random())))


def build_model(n: int, seed: int) -> Model:
    rng = random.Random(seed)
    m = Model(n, seed)
    tabs: list[int] = []
    while sum(tabs) < n:
        tabs.append(rng.randint(1, TAB_MAX))
    tabs[-1] -= sum(tabs) - n
    m.users = [u % TENANTS for u in range(len(tabs))]
    repo_of = [0] * len(tabs)
    analysis_of = [-1] * len(tabs)
    for t in range(TENANTS):
        members = [u for u in range(len(tabs)) if m.users[u] == t]
        rng.shuffle(members)
        pos = 0
        while pos < len(members):
            size = _group(rng)
            j = len(m.repos)
            m.repos.append(t)
            m.repos_of.setdefault(t, []).append(j)
            for u in members[pos : pos + size]:
                repo_of[u] = j
            pos += size
        watchers = [u for u in members if rng.random() < WATCH_SHARE]
        pos = 0
        while pos < len(watchers):
            size = _group(rng)
            j = len(m.analyses)
            m.analyses.append(t)
            for u in watchers[pos : pos + size]:
                analysis_of[u] = j
            pos += size
    for u, k in enumerate(tabs):
        for _ in range(k):
            x = rng.random()
            transport = "ws" if x < 0.85 else "sse" if x < 0.95 else "poll"
            m.conns.append((u, transport, repo_of[u], analysis_of[u]))
    return m


def channel_path(channel: str, http_share: float) -> str:
    """Each channel is published through one path only, so that its events keep their order."""
    return "http" if (zlib.crc32(channel.encode()) % 1000) < http_share * 1000 else "ingest"


# --------------------------------------------------------------------------------------------
# control over stdin/stdout


async def _control(handler) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = orjson.loads(line)
        try:
            answer = await handler(msg)
        except Exception as exc:  # the orchestrator decides what a failed command means
            import traceback

            answer = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        sys.stdout.buffer.write(orjson.dumps(answer) + b"\n")
        sys.stdout.buffer.flush()
        if msg.get("cmd") == "exit":
            return


# --------------------------------------------------------------------------------------------
# the tabs


class _Hooked:
    """Mixin over loadgen's clients: tells the tab when its connection ends unasked."""

    lineage: Lineage
    intentional = False

    def close(self) -> None:  # type: ignore[override]
        was = self.closed  # type: ignore[attr-defined]
        super().close()  # type: ignore[misc]
        if not was and not self.intentional:
            self.lineage.dropped(self)


class SwarmWS(_Hooked, WSClient):
    def on_text(self, payload: bytearray) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        self.lineage.feed(payload, self.ts)

    def on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
        self.lineage.w.count("close_codes", str(code))
        self._fail(f"closed {code}")
        self.close()


class SwarmSSE(_Hooked, SSEClient):
    pass


class SwarmPoll(_Hooked, PollClient):
    pass


class SwarmSIO(_Hooked, SIOClient):
    def on_text(self, payload: bytearray) -> None:
        if payload[:2] == b"43":  # an ack: our join/leave
            self.lineage.sio_ack(bytes(payload[2:]), self.ts)
            return
        super().on_text(payload)

    def on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
        self.lineage.w.count("close_codes", str(code))
        self.close()


class Lineage:
    """One browser tab across its connections."""

    def __init__(self, w: Worker, idx: int, user: int, transport: str, repo: int, analysis: int) -> None:
        self.w = w
        self.idx, self.user, self.transport = idx, user, transport
        self.tenant = w.model.users[user]
        self.repo = f"repository:r{repo}"
        self.extra = [self.repo] + ([f"analysis:a{analysis}", f"job:a{analysis}"] if analysis >= 0 else [])
        self.client: Any = None
        self.cursor: str | None = None
        self.pid: str | None = None
        self.offset: str | None = None
        self.port = 0
        self.windows: dict[str, list[list[int]]] = {}
        self.pending: dict[str, int] = {}  # channel -> ack id (sio) or 0: due once acknowledged
        self.recv: dict[str, array] = {}
        self.ids: dict[str, array] = {}
        self.presence = 0
        self.snapshots = 0
        self.disconnects = 0
        self.http_errors = 0
        self.state = "new"  # new | connecting | open | down | stopped
        self.opened_at = 0.0
        self.attempt = 0
        self.victim = False
        self.lost_ns = 0
        self.resumed_ns = 0
        self.attempts_storm = 0
        self.recovered: bool | None = None
        self.ack_seq = 0
        self.joined = {f"user:u{user}", *self.extra}

    # --- receiving -------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray, now: int) -> None:
        w = self.w
        if w.sio:
            for m in _SIO.finditer(data):
                self._got(m.group(4).decode(), int(m.group(3)), 0, int(m.group(2)), now - int(m.group(1)))
            return
        if b'"op"' in data:
            for m in _SUBSCRIBED.finditer(data):
                ch = m.group(1).decode()
                if ch in self.pending:
                    del self.pending[ch]
                    self.windows.setdefault(ch, []).append([now, 0])
            if b'"op":"error"' in data:
                w.count("error_frames", bytes(data[:160]).decode(errors="replace"))
            if b'"op":"reset"' in data:
                w.count("resets", self.transport)
        if _PRESENCE in data:
            self.presence += data.count(_PRESENCE)
        ms = list(_OURS.finditer(data))
        for i, m in enumerate(ms):
            end = ms[i + 1].start() if i + 1 < len(ms) else len(data)
            if data.find(_SNAP, m.end(), end) >= 0:
                self.snapshots += 1
                continue
            self.cursor = f"{int(m.group(1))}-{int(m.group(2))}"
            self._got(m.group(6).decode(), int(m.group(5)), int(m.group(1)) * 100_000 + int(m.group(2)),
                      int(m.group(4)), now - int(m.group(3)))

    def _got(self, ch: str, seq: int, eid: int, step: int, lat: int) -> None:
        arr = self.recv.get(ch)
        if arr is None:
            arr = self.recv[ch] = array("q")
            self.ids[ch] = array("q")
        arr.append(seq)
        self.ids[ch].append(eid)
        w = self.w
        lats = w.lat.get(step)
        if lats is None:
            lats = w.lat[step] = array("q")
        lats.append(lat)
        w.received += 1

    def error(self, text: str) -> None:
        m = _STATUS.search(text)
        if m and ("refused" in text or "5xx" in text):
            self.w.count("http_status", m.group(1))
        self.w.count("errors", text[:100])

    def sio_ack(self, body: bytes, ts: int) -> None:
        m = re.match(rb"(\d+)", body)
        if not m:
            return
        ack = int(m.group(1))
        for ch, want in list(self.pending.items()):
            if want == ack:
                del self.pending[ch]
                self.windows.setdefault(ch, []).append([ts, 0])

    # --- connecting ------------------------------------------------------------------------

    def _make(self, port: int, resume: bool) -> Any:
        w = self.w
        host = f"127.0.0.1:{port}"
        if w.sio:
            rooms = ",".join(self.extra)
            path = f"/socket.io/?EIO=4&transport=websocket&user=u{self.user}&tenant={w.model.tenant(self.tenant)}&rooms={rooms}"
            recover = {"pid": self.pid, "offset": self.offset} if resume and self.pid and self.offset else None
            c = SwarmSIO(self, host, path, {}, recover=recover)
            c.track_offset = True
        else:
            headers = {"Authorization": f"Bearer {w.token(self.user, self.tenant)}"}
            since = self.cursor if self.cursor else w.boot_cursor
            chans = ",".join(self.extra)
            if self.transport == "ws":
                q = f"?since={since}" if since else ""
                if resume:
                    q += ("&" if q else "?") + f"channels={chans}"
                c = SwarmWS(self, host, f"/v1/ws{q}", headers)
            elif self.transport == "sse":
                if since:
                    headers["Last-Event-ID"] = since
                c = SwarmSSE(self, host, f"/v1/sse?channels={chans}", headers)
            else:
                if isinstance(self.client, PollClient) and self.client.since:
                    since = self.client.since
                c = SwarmPoll(self, host, f"/v1/poll?channels={chans}", headers, since, w.poll_timeout)
        c.lineage = self
        return c

    async def connect(self, resume: bool) -> bool:
        """One attempt: True once the connection is ready (and, on WebSocket, subscribed)."""
        w = self.w
        port = w.pick_port()
        self.port = port
        self.state = "connecting"
        c = self._make(port, resume)
        old, self.client = self.client, c
        if old is not None and not old.closed:
            old.intentional = True
            old.close()
        src = w.src_for(self.idx)
        t_send = time.time_ns()
        try:
            await asyncio.wait_for(c.connect(src, port), w.connect_timeout)
            await asyncio.wait_for(c.ready, w.connect_timeout)
        except (TimeoutError, OSError, ConnectionError) as exc:
            kind = type(exc).__name__
            if isinstance(exc, ConnectionRefusedError):
                w.count("connect_failures", "refused (ECONNREFUSED)")
            elif isinstance(exc, ConnectionResetError):
                w.count("connect_failures", "reset")
            elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                w.count("connect_failures", "timeout (handshake unanswered)")
            else:
                w.count("connect_failures", f"{kind}: {str(exc)[:60]}")
            c.intentional = True
            c.close()
            self.state = "down"
            return False
        now = time.time_ns()
        self.state = "open"
        self.opened_at = time.monotonic()
        if w.sio:
            if resume and self.pid:
                self.recovered = c.pid == self.pid
                w.count("sio_recovery", "recovered" if self.recovered else "new session (state lost)")
            self.pid = c.pid
            if not resume:
                for ch in self.extra:  # joined from the query at once
                    self.windows.setdefault(ch, []).append([now, 0])
                for ch in (f"user:u{self.user}",):
                    self.windows.setdefault(ch, []).append([now, 0])
        elif self.transport == "ws" and not resume:
            self.windows.setdefault(f"user:u{self.user}", []).append([now, 0])
            for ch in self.extra:
                self.pending[ch] = 0
                c.send_text(orjson.dumps({"op": "subscribe", "channel": ch}))
        elif not resume:
            for ch in [f"user:u{self.user}", *self.extra]:
                self.windows.setdefault(ch, []).append([t_send if self.transport == "poll" else now, 0])
        if resume and self.pending:  # joined (in the query) before their acknowledgement came: due from now
            for ch in list(self.pending):
                self.windows.setdefault(ch, []).append([now, 0])
            self.pending.clear()
        if self.victim and self.resumed_ns == 0:
            self.resumed_ns = now
        self.attempt = 0 if not resume else self.attempt
        return True

    def dropped(self, client: Any) -> None:
        if client is not self.client or self.state != "open":
            return  # a connection that fails while connecting is retried by `connect`'s caller
        w = self.w
        w.count("drops", "storm victim" if self.victim else "unexpected")
        if self.victim and not self.lost_ns:
            self.lost_ns = time.time_ns()
        if isinstance(client, SIOClient) and client.offset:
            self.offset = client.offset
        self.state = "down"
        if time.monotonic() - self.opened_at >= STABLE_S:
            self.attempt = 0
        w.spawn(self.reconnect())

    async def reconnect(self) -> None:
        w = self.w
        while self.state != "open" and not w.stopping and w.remaining() > 5:
            ceiling = min(MAX_S, BASE_S * 2 ** min(self.attempt, 30))
            await asyncio.sleep(w.rng.random() * ceiling)
            self.attempt += 1
            if self.victim:
                self.attempts_storm += 1
            if isinstance(self.client, SIOClient) and self.client.offset:
                self.offset = self.client.offset
            if await self.connect(resume=True):
                return

    # --- churn -----------------------------------------------------------------------------

    async def churn(self) -> None:
        w = self.w
        choices = w.model.repos_of[self.tenant]
        new = f"repository:r{w.rng.choice(choices)}"
        if new == self.repo or self.state != "open":
            return
        now = time.time_ns()
        old = self.repo
        self._close_window(old, now - MARGIN_NS)
        self.pending.pop(old, None)
        self.repo = new
        self.extra[0] = new
        self.joined.add(new)
        c = self.client
        w.churns += 1
        if w.sio:
            self.ack_seq += 2
            c.send_text(b"42" + orjson.dumps(["leave", old]))
            self.pending[new] = self.ack_seq
            c.send_text(b"42%d" % self.ack_seq + orjson.dumps(["join", new]))
        elif self.transport == "ws":
            c.send_text(orjson.dumps({"op": "unsubscribe", "channel": old}))
            self.pending[new] = 0
            c.send_text(orjson.dumps({"op": "subscribe", "channel": new}))
        else:  # SSE / poll: a new request with the new channels, from the cursor
            self.pending[new] = -1  # due once the new request is answered
            if not await self.connect(resume=True):
                w.spawn(self.reconnect())

    def _close_window(self, ch: str, end: int) -> None:
        for win in self.windows.get(ch, []):
            if win[1] == 0:
                win[1] = max(end, win[0])

    def stop(self) -> None:
        self.state = "stopped"
        if self.client is not None:
            self.client.intentional = True
            self.client.close()

    # --- accounting ------------------------------------------------------------------------

    def account(self, pub: dict[str, tuple[Any, Any, Any]], end_ns: int, out: dict) -> None:
        import numpy as np

        for ch, wins in self.windows.items():
            p = pub.get(ch)
            if p is None:
                continue
            seqs, ts, steps = p
            mask = np.zeros(len(seqs), dtype=bool)
            for a, b in wins:
                mask |= (ts >= a) & (ts < (b or end_ns))
            due = seqs[mask]
            due_steps = steps[mask]
            got = self.recv.get(ch)
            got_set = set(got) if got is not None else set()
            for s in np.unique(due_steps):
                st = out["steps"].setdefault(str(int(s)), {"due": 0, "missing": 0})
                sel = due_steps == s
                st["due"] += int(sel.sum())
                miss = [int(q) for q in due[sel] if int(q) not in got_set]
                st["missing"] += len(miss)
                if miss and len(out["missing_examples"]) < 10:
                    out["missing_examples"].append({"tab": self.idx, "transport": self.transport, "channel": ch,
                                                    "seqs": miss[:5], "victim": self.victim, "windows": wins[:3]})
        for ch, arr in self.recv.items():
            if ch not in self.joined:
                out["foreign"] += len(arr)
                continue
            ids = self.ids[ch]
            first: dict[int, int] = {}
            top = -1
            for seq, eid in zip(arr, ids, strict=True):
                prev = first.get(seq)
                if prev is None:
                    first[seq] = eid
                    if seq < top:
                        out["out_of_order"] += 1
                        if len(out["order_examples"]) < 10:
                            out["order_examples"].append({"tab": self.idx, "channel": ch, "seq": seq, "after": top})
                    top = max(top, seq)
                elif prev == eid and eid != 0:
                    out["redelivered"] += 1
                else:
                    out["duplicates"] += 1
                    if len(out["dup_examples"]) < 10:
                        out["dup_examples"].append({"tab": self.idx, "transport": self.transport, "channel": ch, "seq": seq})
            out["received"] += len(arr)


# --------------------------------------------------------------------------------------------
# the worker


class Worker:
    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.sys = conf["system"]
        self.sio = self.sys["kind"] != "ours"
        self.model = build_model(int(conf["n"]), int(conf["seed"]))
        self.index, self.of = int(conf["index"]), int(conf["of"])
        self.rng = random.Random(int(conf["seed"]) * 1000 + self.index)
        self.alive_ports: list[int] = list(self.sys["ports"])
        self.killed_port = 0
        self.storm_ns = 0
        self.deadline = time.monotonic() + float(conf["deadline"])
        self.connect_timeout = float(conf.get("connect_timeout", 30))
        self.poll_timeout = float(conf.get("poll_timeout", 25))
        self.source_ips = int(conf["source_ips"])
        self.tabs = [Lineage(self, i, *self.model.conns[i]) for i in range(self.index, len(self.model.conns), self.of)]
        self.lat: dict[int, array] = {}
        self.received = 0
        self.churns = 0
        self.counters: dict[str, dict[str, int]] = {}
        self.stopping = False
        self.boot_cursor: str | None = None
        self._boot_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._tokens: dict[int, str] = {}
        self._churn: asyncio.Task | None = None
        self.cpu = procstat.CpuMeter([os.getpid()])

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def count(self, kind: str, key: str) -> None:
        d = self.counters.setdefault(kind, {})
        if key in d or len(d) < 30:
            d[key] = d.get(key, 0) + 1
        else:
            d["(other)"] = d.get("(other)", 0) + 1

    def spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def token(self, user: int, tenant: int) -> str:
        tok = self._tokens.get(user)
        if tok is None:
            import jwt

            now = int(time.time())
            tok = self._tokens[user] = jwt.encode(
                {"sub": f"u{user}", "tid": self.model.tenant(tenant), "iat": now, "exp": now + 4 * 3600,
                 "channels": CHANNEL_CLAIM}, self.sys["secret"], algorithm="HS256")
        return tok

    def pick_port(self) -> int:
        return self.rng.choice(self.alive_ports)

    def src_for(self, idx: int) -> str:
        return f"127.0.0.{2 + idx % self.source_ips}"

    async def bootstrap(self) -> None:
        """The head, as the browser client learns it before its first connection (GET /v1/poll?timeout=0)."""
        if self.sio or time.monotonic() - self._boot_at < 5:
            return
        port = self.pick_port()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            tok = self.token(self.tabs[0].user, self.tabs[0].tenant)
            writer.write(f"GET /v1/poll?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n"
                         "Connection: close\r\n\r\n".encode())
            body = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            m = re.search(rb'"cursor":"([0-9]+-[0-9]+)"', body)
            if m:
                self.boot_cursor = m.group(1).decode()
                self._boot_at = time.monotonic()
            else:
                self.count("errors", f"bootstrap answer without cursor: {body[:80]!r}")
        except (OSError, TimeoutError) as exc:
            self.count("errors", f"bootstrap failed: {type(exc).__name__}")

    async def connect(self, transport: str, upto: int, conc: int, phase_seconds: float) -> dict:
        """Connect these tabs; the ones not connected within `phase_seconds` are given up (`abandoned`:
        a stalled server must not stall the run, what was connected is measured)."""
        todo = [t for t in self.tabs if t.transport == transport and t.idx < upto and t.state == "new"]
        sem = asyncio.Semaphore(conc)
        t0 = time.monotonic()
        phase_end = t0 + phase_seconds
        failed_tabs = 0
        before = dict(self.counters.get("connect_failures", {}))

        async def one(tab: Lineage) -> None:
            nonlocal failed_tabs
            async with sem:
                await self.bootstrap()
                for _ in range(6):
                    if self.remaining() < 10 or time.monotonic() > phase_end:
                        break
                    if await tab.connect(resume=False):
                        return
                    tab.attempt += 1
                    await asyncio.sleep(self.rng.random() * min(MAX_S, BASE_S * 2 ** tab.attempt))
                failed_tabs += 1
                if tab.state != "open":
                    tab.state = "abandoned"

        await asyncio.gather(*(one(t) for t in todo))
        now = self.counters.get("connect_failures", {})
        return {"requested": len(todo), "connected": sum(1 for t in todo if t.state == "open"), "failed": failed_tabs,
                "seconds": round(time.monotonic() - t0, 2),
                "failures": {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}}

    async def churn_loop(self, rate: float) -> None:
        carry = 0.0
        while not self.stopping:
            await asyncio.sleep(0.1)
            open_tabs = [t for t in self.tabs if t.state == "open"]
            carry += len(open_tabs) * rate * 0.1
            k = int(carry)
            carry -= k
            for tab in self.rng.sample(open_tabs, min(k, len(open_tabs))):
                self.spawn(tab.churn())

    def status(self) -> dict:
        states: dict[str, int] = {}
        for t in self.tabs:
            states[t.state] = states.get(t.state, 0) + 1
        victims = [t for t in self.tabs if t.victim]
        return {"states": states, "received": self.received, "churns": self.churns,
                "victims": len(victims), "resumed": sum(1 for t in victims if t.resumed_ns),
                "gen_cpu_pct": round(self.cpu.percent(), 1), "rss_mb": round(procstat.rss_kb(os.getpid()) / 1024, 1)}

    async def handle(self, msg: dict) -> dict:
        cmd = msg["cmd"]
        if cmd == "connect":
            return await self.connect(msg["transport"], int(msg["upto"]), int(msg.get("concurrency", 100)),
                                      float(msg.get("phase_seconds", 1e9)))
        if cmd == "churn":
            if self._churn is not None:
                self._churn.cancel()
                self._churn = None
            if msg["rate"] > 0:
                self._churn = asyncio.get_running_loop().create_task(self.churn_loop(float(msg["rate"])))
            return {"ok": True}
        if cmd == "status":
            out = self.status()
            self.cpu.mark()
            return out
        if cmd == "ports":
            self.alive_ports = list(msg["alive"])
            if msg.get("killed"):
                self.killed_port = int(msg["killed"])
                self.storm_ns = int(msg["storm_ns"])
                for t in self.tabs:  # the ones whose process is gone, even if they have not noticed yet
                    if t.port == self.killed_port and t.state in ("open", "connecting", "down") and not t.victim:
                        t.victim = True
                        if t.state != "open":
                            t.lost_ns = time.time_ns()
            return {"ok": True}
        if cmd == "killed_at":
            self.storm_ns = int(msg["ns"])
            return {"ok": True}
        if cmd == "counters":
            return {"counters": self.counters, "http_errors": sum(t.http_errors for t in self.tabs)}
        if cmd == "storm":
            victims = [t for t in self.tabs if t.victim]
            return {"victims": len(victims),
                    "resume_ms": [round((t.resumed_ns - self.storm_ns) / 1e6, 1) for t in victims if t.resumed_ns],
                    "attempts": [t.attempts_storm for t in victims],
                    "unresumed": sum(1 for t in victims if not t.resumed_ns)}
        if cmd == "finish":
            return await self.finish(msg)
        if cmd == "exit":
            return {"ok": True}
        raise ValueError(f"unknown command {cmd}")

    async def finish(self, msg: dict) -> dict:
        import numpy as np

        self.stopping = True
        if self._churn is not None:
            self._churn.cancel()
        for t in self.tabs:
            t.stop()
        with open(msg["published"], "rb") as f:
            raw = orjson.loads(f.read())
        pub = {ch: (np.array(v[0], dtype=np.int64), np.array(v[1], dtype=np.int64), np.array(v[2], dtype=np.int64))
               for ch, v in raw.items()}
        out: dict[str, Any] = {"steps": {}, "received": 0, "duplicates": 0, "redelivered": 0, "out_of_order": 0,
                               "foreign": 0, "missing_examples": [], "dup_examples": [], "order_examples": []}
        end_ns = int(msg["end_ns"])
        for t in self.tabs:
            t.account(pub, end_ns, out)
        lat_dir = msg["lat_dir"]
        for step, arr in self.lat.items():
            with open(os.path.join(lat_dir, f"w{self.index}.s{step}.bin"), "wb") as f:
                f.write(arr.tobytes())
        out["presence_events"] = sum(t.presence for t in self.tabs)
        out["snapshots"] = sum(t.snapshots for t in self.tabs)
        out["http_errors"] = sum(t.http_errors for t in self.tabs)
        out["counters"] = self.counters
        out["churns"] = self.churns
        out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return out


# --------------------------------------------------------------------------------------------
# the publisher


class _RedisSink(asyncio.Protocol):
    def __init__(self) -> None:
        self.errors = 0
        self.last = b""

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"-") or b"\r\n-" in data:
            self.errors += 1
            self.last = data[:200]


class _Http:
    """One keep-alive HTTP/1.1 connection publishing POST /v1/events one request at a time, in order;
    a request that fails (connection lost, 5xx) is sent again, with the same idempotency key."""

    def __init__(self, pub: Publisher, k: int) -> None:
        self.pub, self.k = pub, k
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def _open(self) -> None:
        port = self.pub.ports[(self.k + self.pub.rng.randrange(1 << 16)) % len(self.pub.ports)]
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)

    async def run(self) -> None:
        while True:
            body = await self.queue.get()
            for attempt in range(20):
                try:
                    if self.writer is None:
                        await self._open()
                    head = (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.pub.service}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                    self.writer.write(head + body)  # type: ignore[union-attr]
                    status_line = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)  # type: ignore[union-attr]
                    status = int(status_line[9:12])
                    m = re.search(rb"content-length: *(\d+)", status_line.lower())
                    answer = await self.reader.readexactly(int(m.group(1)) if m else 0)  # type: ignore[union-attr]
                    self.pub.count("http_status", str(status))
                    if status >= 500 or status == 429:
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    if status >= 400:
                        self.pub.count("http_refused", f"{status} {answer[:100]!r}")
                    break
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                    self.pub.count("http_conn_errors", type(exc).__name__)
                    if self.writer is not None:
                        self.writer.close()
                    self.writer = None
                    await asyncio.sleep(min(0.2 * (attempt + 1), 2))
            else:
                self.pub.count("http_gave_up", "20 attempts")


class Publisher:
    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.sys = conf["system"]
        self.ours = self.sys["kind"] == "ours"
        self.model = build_model(int(conf["n"]), int(conf["seed"]))
        self.rng = random.Random(int(conf["seed"]) * 7 + 1)
        self.ports: list[int] = list(self.sys["ports"])
        self.http_share = float(conf.get("http_share", 0.1)) if self.ours else 0.0
        self.mix = conf.get("mix", {"notification": 0.6, "progress": 0.25, "job": 0.15})
        self.pad = b"x" * int(conf.get("pad", 60))
        self.seq: dict[str, int] = {}
        self.log: dict[str, list[list[int]]] = {}
        self.paths: dict[str, str] = {}
        self.counters: dict[str, dict[str, int]] = {}
        self.sink = _RedisSink()
        self.transport: asyncio.Transport | None = None
        self.http: list[_Http] = []
        self.service = ""
        self.published = 0
        self.by_kind: dict[str, int] = {}
        self.by_path: dict[str, int] = {}

    def count(self, kind: str, key: str) -> None:
        d = self.counters.setdefault(kind, {})
        d[key] = d.get(key, 0) + 1

    async def start(self) -> None:
        host, port = self.sys.get("redis", "127.0.0.1:6379").rsplit(":", 1)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: self.sink, host, int(port))
        if self.ours:
            import jwt

            now = int(time.time())
            self.service = jwt.encode({"sub": "bench-worker", "tid": "bench0", "iat": now, "exp": now + 4 * 3600,
                                       "scope": "publish"}, self.sys["secret"], algorithm="HS256")
            self.http = [_Http(self, k) for k in range(int(self.conf.get("http_connections", 8)))]

    def _pick(self) -> tuple[str, str, int, bytes]:
        """(kind, channel, tenant, extra JSON fields) of the next event."""
        m = self.model
        x = self.rng.random()
        if x < self.mix["notification"] or not m.analyses:
            u = self.rng.randrange(len(m.users))
            return "notification", f"user:u{u}", m.users[u], b',"title":"bench"'
        a = self.rng.randrange(len(m.analyses))
        if x < self.mix["notification"] + self.mix["progress"]:
            ch = f"analysis:a{a}"
            progress = min(100, self.seq.get(ch, 0) + 1)
            return "progress", ch, m.analyses[a], b',"analysisId":"a%d","progress":%d' % (a, progress)
        return "job", f"job:a{a}", m.analyses[a], b',"status":"running"'

    def one(self, step: int) -> bytes:
        kind, ch, tenant, extra = self._pick()
        seq = self.seq[ch] = self.seq.get(ch, 0) + 1
        t = time.time_ns()
        data = b'{"t":%d,"s":%d,"q":%d,"c":"%s"%s,"p":"%s"}' % (t, step, seq, ch.encode(), extra, self.pad)
        rec = self.log.get(ch)
        if rec is None:
            rec = self.log[ch] = [[], [], []]
        rec[0].append(seq)
        rec[1].append(t)
        rec[2].append(step)
        self.published += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        type_ = {"notification": "bench.notification", "progress": "analysis.progress", "job": "job.status"}[kind]
        path = self.paths.get(ch)
        if path is None:
            path = self.paths[ch] = channel_path(ch, self.http_share)
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if path == "http":
            body = orjson.dumps({"tenant": self.model.tenant(tenant), "channel": ch, "type": type_,
                                 "data": orjson.Fragment(data), "idempotency_key": f"{ch}:{seq}"})
            self.http[zlib.crc32(ch.encode()) % len(self.http)].queue.put_nowait(body)
            return b""
        if self.ours:
            return resp(b"XADD", self.sys["pub_stream"].encode(), b"*", b"tenant", self.model.tenant(tenant).encode(),
                        b"channel", ch.encode(), b"type", type_.encode(), b"data", data)
        return resp(b"XADD", self.sys["pub_stream"].encode(), b"*", b"room", ch.encode(), b"data", data)

    async def traffic(self, step: int, rate: float, seconds: float) -> dict:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        total = max(round(rate * seconds), 1)
        done = 0
        before = self.published
        while done < total:
            now = loop.time()
            due = min(total, int((now - t0) * rate) + 1)
            if due > done:
                chunk = b"".join(self.one(step) for _ in range(due - done))
                if chunk:
                    self.transport.write(chunk)  # type: ignore[union-attr]
                done = due
            if now - t0 > seconds * 3 + 5:
                break
            await asyncio.sleep(0.002)
        return {"published": self.published - before, "seconds": round(loop.time() - t0, 2)}

    async def handle(self, msg: dict) -> dict:
        cmd = msg["cmd"]
        if cmd == "traffic":
            return await self.traffic(int(msg["step"]), float(msg["rate"]), float(msg["seconds"]))
        if cmd == "ports":
            self.ports = list(msg["alive"])
            return {"ok": True}
        if cmd == "drain":  # until every HTTP publish is answered
            end = time.monotonic() + float(msg.get("timeout", 60))
            while any(h.queue.qsize() for h in self.http) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            return {"pending_http": sum(h.queue.qsize() for h in self.http)}
        if cmd == "dump":
            with open(msg["path"], "wb") as f:
                f.write(orjson.dumps(self.log))
            return {"published": self.published, "by_kind": self.by_kind, "by_path": self.by_path,
                    "redis_errors": self.sink.errors, "redis_last_error": self.sink.last.decode(errors="replace"),
                    "counters": self.counters, "channels": len(self.log)}
        if cmd == "exit":
            return {"ok": True}
        raise ValueError(f"unknown command {cmd}")


def main(argv: list[str] | None = None) -> None:
    argv = argv if argv is not None else sys.argv[1:]
    role, path = argv[0], argv[1]
    with open(path, "rb") as f:
        conf = orjson.loads(f.read())
    procstat.raise_nofile()
    if conf.get("cpus"):
        os.sched_setaffinity(0, set(conf["cpus"]))
    import uvloop

    async def run() -> None:
        if role == "worker":
            w = Worker(conf)
            handler = w.handle
        else:
            p = Publisher(conf)
            await p.start()
            handler = p.handle
        await asyncio.wait_for(_control(handler), float(conf["deadline"]))

    try:
        uvloop.run(run())
    except TimeoutError:
        print("deadline reached", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
