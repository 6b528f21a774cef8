"""Memory per idle connection, measured with tracemalloc inside a real node.

The node runs in this process (gevent-patched, embedded store, tracemalloc
on); a client process opens N WebSocket connections and holds them idle. The
Python heap grown per connection is reported with the allocation sites that
account for it, beside the RSS grown per connection (which adds the kernel's
socket buffers and the C-level parts tracemalloc does not see).

    .venv/bin/python -m bench.session_memory --connections 2000 [--record]
"""

from __future__ import annotations

from pushsvc.nativethreads import cooperate

cooperate()  # as in a node

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import gevent  # noqa: E402

from bench.common import (  # noqa: E402
    append_results,
    command_line,
    machine,
    raise_nofile,
    rss_bytes,
    table,
    utc_now,
)
from pushsvc.config import load_settings  # noqa: E402
from pushsvc.server import Server  # noqa: E402

SECRET = "bench-jwt-secret-of-sufficient-length"

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.client import connect
    from pushsvc.auth import mint_token

    async def main(url, n, secret):
        conns, sem = [], asyncio.Semaphore(100)
        async def one(i):
            async with sem:
                ws = await connect(f"{url}?token={mint_token(secret, f'm{i}', 3600)}",
                                   ping_interval=None, open_timeout=60)
                await ws.recv()  # the welcome
                conns.append(ws)
        await asyncio.gather(*(one(i) for i in range(n)))
        print("OPEN", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for ws in conns:
            await ws.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


def _settle() -> None:
    """Let the welcomes, replays and flushes finish, then collect garbage."""
    for _ in range(20):
        gevent.sleep(0.1)  # run the event loop: nothing here waits on a condition
    gc.collect()


def measure(n: int) -> tuple[str, float, float]:
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="pushsvc-mem-")
    settings = load_settings(
        environ={
            "PUSHSVC_WS_ADDR": "127.0.0.1:0",
            "PUSHSVC_GRPC_ADDR": "127.0.0.1:0",
            "PUSHSVC_ADMIN_ADDR": "127.0.0.1:0",
            "PUSHSVC_DATA_DIR": tmp,
            "PUSHSVC_JWT_SECRET": SECRET,
            "PUSHSVC_API_KEYS": "bench",
            "PUSHSVC_LOG_LEVEL": "warning",
        }
    )
    server = Server(settings)
    server.start()
    url = f"ws://127.0.0.1:{server.ws_port}/ws"
    _settle()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    rss0 = rss_bytes(os.getpid())
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, url, str(n), SECRET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None and client.stdin is not None
    with gevent.Timeout(600):
        line = client.stdout.readline()  # gevent's pipes: the node keeps serving meanwhile
    if line.strip() != "OPEN":
        raise SystemExit(f"the client did not open its connections: {line!r}")
    if server.node.connection_count < n:
        raise SystemExit(f"only {server.node.connection_count} of {n} connections are open")
    _settle()
    after = tracemalloc.take_snapshot()
    rss1 = rss_bytes(os.getpid())
    diff = after.compare_to(before, "lineno")
    heap = sum(d.size_diff for d in diff) / n
    rows = [
        (
            f"{d.traceback[0].filename.rpartition('site-packages/')[2].rpartition('work/')[2]}"
            f":{d.traceback[0].lineno}",
            f"{d.size_diff / n:,.0f}",
            f"{d.count_diff / n:.2f}",
        )
        for d in diff[:12]
    ]
    client.stdin.write("\n")
    client.stdin.flush()
    client.wait(60)
    tracemalloc.stop()
    server.request_stop()
    server.drain()
    body = (
        table(["allocation site (first frame)", "bytes per connection", "blocks"], rows)
        + f"\n\n- Python heap per idle connection (tracemalloc): {heap / 1024:.1f} KiB"
        + f"\n- RSS per idle connection: {(rss1 - rss0) / n / 1024:.1f} KiB\n"
    )
    return body, heap, (rss1 - rss0) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    body, _, _ = measure(args.connections)
    print(body)
    if args.record:
        append_results(
            f"Memory per idle connection (tracemalloc), {args.connections:,} connections"
            f" — {utc_now()}",
            f"- command: `{command_line()}`\n- machine: {machine()}\n"
            f"- took {time.monotonic() - started:.0f} s\n\n"
            "One node in the measuring process (embedded store), its Python heap traced "
            "from before the connects to after them; a client process holds the "
            "connections idle.\n\n" + body,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
