"""Running a client's own test suite (Go, Java, Node) from pytest.

``suite_env`` is the environment the suite's tools run in (none of this
process's PUSHSVC_* settings leak into it), ``live_env`` tells the suite where
the node under test is, and ``run``/``run_ok`` run one tool with its output
captured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from tests.nodeproc import API_KEY, JWT_SECRET, NodeProcess

ROOT = Path(__file__).resolve().parent.parent

# What every client says, in every language, when the environment holds no API key.
NO_API_KEY = (
    "pushsvc: no API key: set PUSHSVC_API_KEY, or PUSHSVC_API_KEYS as on the node "
    "(its first key is used)"
)


def suite_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its PUSHSVC_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update(extra or {})
    return env


def live_env(node: NodeProcess) -> dict[str, str]:
    """What a client suite's live tests read: the node's addresses and secrets."""
    return {
        "PUSHSVC_TEST_GRPC_ADDR": node.grpc_addr,
        "PUSHSVC_TEST_WS_URL": node.ws_url,
        "PUSHSVC_TEST_API_KEY": API_KEY,
        "PUSHSVC_TEST_JWT_SECRET": JWT_SECRET,
    }


def tls_client_env(node: NodeProcess, *, with_ca: bool = True) -> dict[str, str]:
    """What a client's environment holds to reach a TLS node: its address, an API key
    and the CA file that issued its certificate (unless ``with_ca`` is off)."""
    env = {"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY}
    if with_ca:
        env["PUSHSVC_TLS_CA"] = node.env["PUSHSVC_TLS_CA"]
    return env


def run(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 600,
    merge_stderr: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end; its stderr goes to its stdout unless ``merge_stderr`` is off."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )


def run_ok(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 600,
    detail: Callable[[], str] = str,
) -> str:
    """Run ``cmd``; return its output, or fail with it (and ``detail()``) unless it exits 0."""
    proc = run(cmd, cwd=cwd, env=env, timeout=timeout)
    output = proc.stdout
    print(f"$ {' '.join(cmd)}\n{output}")
    assert proc.returncode == 0, f"`{' '.join(cmd)}` exited {proc.returncode}:\n{output}{detail()}"
    return output


def tracked_files(subdir: str) -> list[Path]:
    """The files git tracks under ``subdir`` (relative to the repository): a clean clone's."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--", subdir],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def npm_pack(package: Path, dest: Path) -> Path:
    """``npm pack`` ``package`` into ``dest``, as a publisher would; the tarball's path."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is not installed: run make tools"
    dest.mkdir(parents=True, exist_ok=True)
    run_ok(
        [npm, "pack", "--pack-destination", str(dest), "--loglevel=error"],
        cwd=package,
        env=suite_env(),
    )
    (tarball,) = dest.glob("*.tgz")
    return tarball


def tarball_files(tarball: Path) -> set[str]:
    """The paths inside an npm tarball, without the leading ``package/``."""
    with tarfile.open(tarball) as tar:
        return {name.removeprefix("package/") for name in tar.getnames()}


def npm_project(where: Path, *tarballs: Path) -> Path:
    """An empty npm project at ``where`` with ``tarballs`` installed, as a user would."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is not installed: run make tools"
    where.mkdir(parents=True)
    (where / "package.json").write_text('{"name": "scratch", "private": true, "type": "module"}\n')
    run_ok(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *map(str, tarballs)],
        cwd=where,
        env=suite_env(),
    )
    return where
