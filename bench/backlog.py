"""Build the resume scenario's backlog fast: a client's own events inside a large unrelated log.

Our service: through the event log's own API (`RedisEventLog.append`, so the keys, the arguments
and the Lua append script are exactly the service's), with the script calls captured and sent in
pipelines of thousands instead of one round trip each.

Socket.IO (Node): entries written straight into the adapter's Redis stream in the adapter's own
encoding (what another Socket.IO process's `io.to(room).emit(...)` appends).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

CHUNK = 5000


def _positions(total_unrelated: int, own: int) -> set[int]:
    """Where the own events sit: spread evenly through the backlog (the last one at its end)."""
    step = max((total_unrelated + own) // own, 1)
    return {min(step * (i + 1) - 1, total_unrelated + own - 1) for i in range(own)}


def _own_data(i: int, pad: int) -> bytes:
    return b'{"t":%d,"s":-1,"i":%d,"p":"%s"}' % (time.time_ns(), i, b"x" * pad)


def _other_data(i: int, pad: int) -> bytes:
    return b'{"t":%d,"s":-9,"i":%d,"p":"%s"}' % (0, i, b"x" * pad)


async def build_ours(settings: Any, tenant: str, user: str, unrelated: int, own: int, pad: int = 60) -> dict:
    """Returns the cursor to resume from (an own event appended before the backlog)."""
    from app.eventlog import create_event_log
    from app.eventlog.base import Draft
    from app.redis_client import create_redis

    redis = create_redis(settings)
    log = create_event_log(settings, redis)
    await log.start()
    t0 = time.monotonic()
    try:
        first, _ = await log.append(Draft(tenant=tenant, channel=f"user:{user}", type="bench.own", data=_own_data(-1, pad)))
        real = log._append  # the registered Lua script; append() builds its keys and arguments
        captured: list[tuple[list, list]] = []

        async def capture(keys: list, args: list, client: Any = None) -> list:
            captured.append((keys, args))
            return [b"0-0", 1]

        own_at = _positions(unrelated, own)
        total = unrelated + own
        n_own = 0
        pending: asyncio.Future | None = None
        for start in range(0, total, CHUNK):
            log._append = capture
            try:
                for k in range(start, min(start + CHUNK, total)):
                    if k in own_at:
                        draft = Draft(tenant=tenant, channel=f"user:{user}", type="bench.own", data=_own_data(n_own, pad))
                        n_own += 1
                    else:
                        draft = Draft(tenant=tenant, channel=f"user:x{k % 1000}", type="bench.other", data=_other_data(k, pad))
                    await log.append(draft)
            finally:
                log._append = real
            pipe = log.redis.pipeline(transaction=False)
            for keys, args in captured:
                await real(keys=keys, args=args, client=pipe)
            captured = []
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(pipe.execute())
        if pending is not None:
            await pending
        head = await log.head()
    finally:
        await log.close()
        if redis is not None:
            await redis.aclose()
    return {"since": first, "head": head, "own": n_own, "unrelated": unrelated, "build_seconds": round(time.monotonic() - t0, 1)}


def build_socketio(redis_client: Any, stream: str, user: str, unrelated: int, own: int, pad: int = 60) -> dict:
    """Append BROADCAST messages to the adapter's stream (synchronous redis client)."""
    t0 = time.monotonic()
    own_at = _positions(unrelated, own)
    total = unrelated + own
    n_own = 0
    for start in range(0, total, CHUNK):
        pipe = redis_client.pipeline(transaction=False)
        for k in range(start, min(start + CHUNK, total)):
            if k in own_at:
                room, data = f"user:{user}", _own_data(n_own, pad)
                n_own += 1
            else:
                room, data = f"user:x{k % 1000}", _other_data(k, pad)
            message = {"packet": {"type": 2, "data": ["event", orjson.Fragment(data)], "nsp": "/"},
                       "opts": {"rooms": [room], "except": [], "flags": {}}}
            pipe.xadd(stream, {"uid": "bench-backlog", "nsp": "/", "type": "3", "data": orjson.dumps(message)})
        pipe.execute()
    return {"own": n_own, "unrelated": unrelated, "build_seconds": round(time.monotonic() - t0, 1)}
