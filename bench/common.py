"""Shared pieces of the benchmarks: process stats, limits, result tables and RESULTS.md."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


LOAD_AT_START = loadavg()


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slab_bytes() -> int:
    """Kernel slab memory of the whole host (/proc/meminfo Slab): where sockets live."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def utc_now() -> str:
    return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


# Environment that changes what a run measures: named before the command when set.
_MEASURED_ENV = ("GRPC_EXPERIMENTS",)


def command_line() -> str:
    env = [f"{name}={os.environ[name]}" for name in _MEASURED_ENV if name in os.environ]
    return shlex.join([*env, ".venv/bin/python", "-m", _module(), *sys.argv[1:]])


def _module() -> str:
    path = Path(sys.argv[0]).resolve()
    try:
        rel = path.relative_to(REPO).with_suffix("")
    except ValueError:
        return str(path)
    return ".".join(rel.parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def append_results(
    title: str, body: str, *, command: str | None = None, host: str | None = None
) -> None:
    """Append a dated entry to bench/RESULTS.md."""
    header = ""
    if not RESULTS.exists():
        header = (
            "# Benchmark results\n\n"
            "Entries are appended by `bench/suite.py`, `bench/connections.py` and `bench/push.py`; "
            "each names its command, machine and date. Numbers are measured, not estimated.\n"
        )
    entry = (
        f"\n## {title} — {utc_now()}\n\n"
        f"- command: `{command or command_line()}`\n"
        f"- machine: {host or machine()}\n"
        f"- load average (1/5/15 min) at start: {LOAD_AT_START}; at end: {loadavg()} "
        "(other work on the machine shares the 2 cores)\n\n"
        f"{body.rstrip()}\n"
    )
    with RESULTS.open("a") as fh:
        fh.write(header + entry)
