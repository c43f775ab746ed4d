"""Where an idle connection's memory goes: Python's allocations per connection, by source line.

    python -m bench.memprobe --transport ws --n 2000 [--top 30]

The app runs in this process under tracemalloc, served by uvicorn with the direct protocols (as
`python -m app serve` does), on the embedded engines; a child process opens N idle connections
with the load generator's raw clients. Two snapshots, before and after they connect (a warm-up
batch first, so one-time caches do not count), and their difference divided by N. RSS per
connection (`make bench` idle) is larger: the allocator's overhead and fragmentation, and the
interpreter's free lists, are not Python allocations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

SECRET = "memprobe-secret-not-for-production-0123456789"


async def _clients(port: int, n: int, transport: str) -> None:
    """The child: N idle connections, then wait until killed."""
    import jwt

    from bench.loadgen import Recorder, SSEClient, WSClient

    rec = Recorder()
    now = int(time.time())
    tok = jwt.encode({"sub": "probe", "tid": "probe", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {tok}"}
    kind = WSClient if transport == "ws" else SSEClient
    path = "/v1/ws" if transport == "ws" else "/v1/sse"
    sem = asyncio.Semaphore(50)
    clients = []

    async def one() -> None:
        async with sem:
            client = kind(rec, f"127.0.0.1:{port}", path, headers)
            await client.connect("127.0.0.1", port)
            await asyncio.wait_for(client.ready, 30)
            clients.append(client)

    await asyncio.gather(*(one() for _ in range(n)))
    print("ready", len(clients), flush=True)
    await asyncio.Event().wait()


def _connect(port: int, n: int, transport: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-m", "bench.memprobe", "--child", "--port", str(port), "--n", str(n),
                              "--transport", transport], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith("ready"):
        child.kill()
        raise RuntimeError(f"the client process did not connect: {line!r}")
    return child


async def _probe(n: int, transport: str, top: int) -> str:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings
    from app.transports import direct

    data = tempfile.mkdtemp(prefix="memprobe-")
    settings = Settings(jwt_secret=SECRET, data_dir=Path(data), redis_url=None, database_url=None)  # type: ignore[call-arg]
    sock_port = 18900
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=sock_port, ws=direct.DirectWebSocketProtocol,
                            http=direct.DirectHttpProtocol, ws_ping_interval=None, access_log=False, log_config=None,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    warm = await loop.run_in_executor(None, _connect, sock_port, 50, transport)
    await asyncio.sleep(1)
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    child = await loop.run_in_executor(None, _connect, sock_port, n, transport)
    await asyncio.sleep(2)  # every set-up finished (the replay, the subscribed frames)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    for proc in (child, warm):
        proc.kill()
        proc.wait()
    server.should_exit = True
    await task
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"{transport}: {n} idle connections, {total / n:,.0f} B of Python allocations each", "",
             "B/conn  blocks/conn  where"]
    root = str(Path(__file__).resolve().parent.parent) + os.sep
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.replace(root, "").split("site-packages" + os.sep)[-1]
        lines.append(f"{s.size_diff / n:7,.0f}  {s.count_diff / n:11.1f}  {where}:{frame.lineno}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memprobe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", choices=["ws", "sse"], default="ws")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        asyncio.run(_clients(args.port, args.n, args.transport))
        return
    print(asyncio.run(_probe(args.n, args.transport, args.top)))


if __name__ == "__main__":
    main()
