"""The Python client as a user installs it: the pushsvc-client wheel in a fresh virtualenv.

The wheel is built from clients/python once per session (``pip wheel``, with
build isolation, as any builder would), then installed into a new virtualenv
outside the repository from a local directory (``--find-links``), with grpcio
and protobuf from the package index. The README's example runs there, as
written, against a live node. The server itself imports the generated modules
from this distribution only (one copy in the descriptor pool).
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

import pytest

from tests.langtest import NO_API_KEY, ROOT, run, run_ok, suite_env, tls_client_env
from tests.nodeproc import API_KEY, NodeProcess
from tests.wsclient import open_ws

CLIENT_PY = ROOT / "clients" / "python"
VERSION = (ROOT / "VERSION").read_text().strip()

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run_ok(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(CLIENT_PY)],
        cwd=out,
        env=suite_env(),
    )
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="session")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with only the wheel installed (and what it depends on)."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    run_ok(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--find-links",
            str(wheel.parent),
            f"pushsvc-client=={VERSION}",
        ],
        cwd=where,
        env=suite_env(),
    )
    return python


def test_wheel_is_light_and_complete(wheel: Path) -> None:
    assert wheel.name == f"pushsvc_client-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        meta = Parser().parsestr(whl.read(f"pushsvc_client-{VERSION}.dist-info/METADATA").decode())
    for needed in (
        "pushsvc_client/__init__.py",
        "pushsvc_client/client.py",
        "pushsvc_client/py.typed",
        "pushsvc_client/v1/push_pb2.py",
        "pushsvc_client/v1/push_pb2.pyi",
        "pushsvc_client/v1/push_pb2_grpc.py",
        "pushsvc_client/v1/node_pb2.py",
        f"pushsvc_client-{VERSION}.dist-info/licenses/LICENSE",
    ):
        assert needed in names, sorted(names)
    assert not [n for n in names if n.startswith("pushsvc/")], "the server leaked into the wheel"
    requires = meta.get_all("Requires-Dist") or []
    plain = sorted(re.split(r"[ ;<>=!~\[]", r)[0] for r in requires if "extra ==" not in r)
    assert plain == ["grpcio", "protobuf"], requires
    assert meta["License-Expression"] == "Apache-2.0"


def test_fresh_venv_has_no_server_dependencies(fresh_venv: Path) -> None:
    listed = run_ok([str(fresh_venv), "-m", "pip", "list"], cwd=fresh_venv.parent, env=suite_env())
    names = {line.split()[0].lower() for line in listed.splitlines()[2:] if line.strip()}
    assert {"pushsvc-client", "grpcio", "protobuf"} <= names, names
    assert not names & {"pushsvc", "gevent", "pymongo", "gevent-websocket", "pyjwt"}, names
    # The descriptors keep the contract's file names; the import path is pushsvc_client.v1.
    out = run_ok(
        [
            str(fresh_venv),
            "-c",
            "import pushsvc_client as c; from pushsvc_client.v1 import push_pb2 as p;"
            "print(c.__version__, p.DESCRIPTOR.name, p.PushRequest.__module__)",
        ],
        cwd=fresh_venv.parent,
        env=suite_env(),
    )
    assert out.split() == [VERSION, "pushsvc/v1/push.proto", "pushsvc_client.v1.push_pb2"]


def test_readme_example_in_a_fresh_venv(
    node: NodeProcess,
    fresh_venv: Path,
    tmp_path: Path,
    node_factory: Callable[..., NodeProcess],
    tls_env: dict[str, str],
) -> None:
    """The README's example as written; then, unchanged, over TLS with PUSHSVC_TLS_CA."""
    readme = (CLIENT_PY / "README.md").read_text()
    match = re.search(r"^## Example\n.*?```python\n(.*?)^```$", readme, re.S | re.M)
    assert match, "no ```python block under '## Example' in clients/python/README.md"
    example = tmp_path / "example.py"
    example.write_text(match.group(1))
    python = [str(fresh_venv), str(example)]

    env = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEY": API_KEY})
    with open_ws(node, "alice") as ws:
        out = run_ok(python, cwd=tmp_path, env=env, timeout=120)
        (frame,) = ws.messages(1)
    first, second = out.splitlines()
    assert first == f"pushed {frame['id']} seqs [1]"
    assert second.startswith("INVALID_ARGUMENT user_ids is empty"), out
    assert frame["data"] == {"hello": "world"}

    # The node's own environment file works as it is: the first of PUSHSVC_API_KEYS.
    keys = suite_env({"PUSHSVC_GRPC_ADDR": node.grpc_addr, "PUSHSVC_API_KEYS": f"{API_KEY},x"})
    assert run_ok(python, cwd=tmp_path, env=keys).startswith("pushed ")

    bare = run(python, cwd=tmp_path, env=suite_env(), timeout=120)
    assert bare.returncode == 1, bare.stdout
    assert bare.stdout.count(NO_API_KEY) == 1, bare.stdout
    assert "MissingAPIKeyError" in bare.stdout

    # Over TLS: the CA file in PUSHSVC_TLS_CA is all it takes; the system's roots do not
    # know the test CA, so the certificate is really checked.
    tls_node = node_factory(env=tls_env)
    with open_ws(tls_node, "alice") as ws:
        out = run_ok(python, cwd=tmp_path, env=suite_env(tls_client_env(tls_node)), timeout=120)
        (frame,) = ws.messages(1)
    assert out.splitlines()[0] == f"pushed {frame['id']} seqs [1]"
    untrusted = suite_env({**tls_client_env(tls_node, with_ca=False), "PUSHSVC_TLS": "1"})
    refused = run(python, cwd=tmp_path, env=untrusted, timeout=120)
    assert refused.returncode == 1, refused.stdout
    assert "UnavailableError" in refused.stdout and "CERTIFICATE_VERIFY_FAILED" in refused.stdout


def test_the_server_uses_the_clients_generated_modules_only() -> None:
    """One generated copy of pushsvc/v1 in the server's process: pushsvc_client.v1."""
    code = (
        "import sys, pushsvc.cli, pushsvc.grpc_api, pushsvc.cluster;"
        "import pushsvc_client.v1.push_pb2 as p;"
        "print(sorted(m for m in sys.modules if m.startswith('pushsvc.v1')), p.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert out.startswith("[] "), out
    assert Path(out.split()[1]).is_relative_to(CLIENT_PY), out
    assert not (ROOT / "pushsvc" / "v1").exists(), "a stale pushsvc/v1: run make deps"


def test_from_env_reads_the_names_of_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from pushsvc_client import (
        DEFAULT_GRPC_ADDR,
        NO_API_KEY_MESSAGE,
        MissingAPIKeyError,
        PushClient,
        api_key_from_env,
        grpc_addr_from_env,
    )

    assert NO_API_KEY_MESSAGE == NO_API_KEY
    assert api_key_from_env({"PUSHSVC_API_KEY": " own ", "PUSHSVC_API_KEYS": "a"}) == "own"
    assert api_key_from_env({"PUSHSVC_API_KEYS": " , first ,b"}) == "first"
    assert api_key_from_env({"PUSHSVC_API_KEYS": " , "}) is None
    assert grpc_addr_from_env({}) == DEFAULT_GRPC_ADDR
    for name in ("PUSHSVC_API_KEY", "PUSHSVC_API_KEYS", "PUSHSVC_GRPC_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingAPIKeyError, match=re.escape(NO_API_KEY)):
        PushClient.from_env()
    monkeypatch.setenv("PUSHSVC_API_KEYS", "k1,k2")
    monkeypatch.setenv("PUSHSVC_GRPC_ADDR", "127.0.0.1:1")
    with PushClient.from_env(timeout=1.0) as client:
        assert (client.addr, client.timeout) == ("127.0.0.1:1", 1.0)
