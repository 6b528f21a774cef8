"""CPU per OS thread of a running process, interval by interval: which of a node's
threads (the event loop, grpcio's poller and stream threads, the stores' SQLite
threads) a benchmark phase's CPU went to. Reads ``/proc/<pid>/task/*/stat``;
names each thread by the innermost frames py-spy sees in it at the first
interval it is busy (``py-spy dump`` stops the process for a moment then: read
the intervals after a phase's first).

    .venv/bin/python -m bench.thread_cpu --match "pushsvc serve" [--interval 2] [--for 120]

Start it, then the benchmark (``python -m bench.suite ...``): it waits for the
process, prints a line per interval (thread id=milliseconds of CPU per second)
and stops when the process exits or after ``--for`` seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import BENCH_TOOLS

PY_SPY = BENCH_TOOLS / "venv" / "bin" / "py-spy"  # bench/install.sh puts it there
TICK = os.sysconf("SC_CLK_TCK")


def find(match: str, deadline: float) -> int | None:
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if match in cmdline:
                return int(entry.name)
        time.sleep(0.2)  # polling for a process to appear
    return None


def ticks(pid: int) -> dict[int, int]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


def names(pid: int) -> dict[int, str]:
    """Each thread's innermost Python frames (py-spy dump), if py-spy is there."""
    if not PY_SPY.exists():
        return {}
    try:
        dump = subprocess.run(
            [str(PY_SPY), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[int, str] = {}
    tid = None
    for line in dump.splitlines():
        if line.startswith("Thread "):
            tid = int(line.split()[1], 0)
            found[tid] = ""
        elif tid is not None and line.startswith("    ") and found[tid].count("<") < 2:
            frame = line.strip().split(" (")[0]
            found[tid] = (found[tid] + " < " + frame) if found[tid] else frame
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--match", required=True, help="a substring of the process's command line")
    p.add_argument("--interval", type=float, default=2.0, help="seconds per line")
    p.add_argument("--for", dest="duration", type=float, default=600.0, help="seconds at most")
    args = p.parse_args()
    if args.interval <= 0 or args.duration <= 0:
        p.error("--interval and --for must be positive")
    end = time.monotonic() + args.duration
    pid = find(args.match, end)
    if pid is None:
        print(f"no process whose command line has {args.match!r}", file=sys.stderr)
        return 1
    print(f"pid {pid}", flush=True)
    named: dict[int, str] = {}
    shown: set[int] = set()  # threads that were busy in some interval
    before, at = ticks(pid), time.monotonic()
    while time.monotonic() < end:
        time.sleep(args.interval)  # the sampling period
        try:
            now_ticks, now = ticks(pid), time.monotonic()
        except OSError:
            break  # the process exited
        busy = {
            tid: (t - before.get(tid, t)) * 1000 / TICK / (now - at)
            for tid, t in now_ticks.items()
            if t - before.get(tid, t) > 0
        }
        if any(tid not in named for tid in busy):
            named.update({t: n for t, n in names(pid).items() if t not in named})
        before, at = now_ticks, now
        cells = [f"{tid}={ms:.0f}" for tid, ms in sorted(busy.items()) if ms >= 10]
        shown.update(tid for tid, ms in busy.items() if ms >= 10)
        print(time.strftime("%H:%M:%S"), f"total={sum(busy.values()):.0f}", *cells, flush=True)
    for tid in sorted(shown):
        print(f"thread {tid}: {named.get(tid, '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
