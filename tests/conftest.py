"""Shared fixtures: real nodes on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushsvc_client.v1 import push_pb2_grpc
from tests.nodeproc import NodeProcess
from tests.pki import Issued, Pki
from tests.wsclient import Client


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start nodes with ``node_factory(env={...})``; all are stopped at the end."""
    started: list[NodeProcess] = []
    counter = [0]

    def factory(env: dict[str, str] | None = None, start: bool = True) -> NodeProcess:
        counter[0] += 1
        proc = NodeProcess(tmp_path / f"node{counter[0]}", env)
        started.append(proc)
        return proc.start() if start else proc

    yield factory
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory()


@pytest.fixture
def stub(node: NodeProcess) -> Iterator[push_pb2_grpc.PushServiceStub]:
    channel = node.channel()
    yield push_pb2_grpc.PushServiceStub(channel)
    channel.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """WebSocket clients a test opens (``clients.append(open_ws(...))``); closed at the end."""
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test CA (made once per session): it issues every node's certificate."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def node_cert(pki: Pki) -> Issued:
    """A certificate for 127.0.0.1 and localhost, issued by ``pki``."""
    return pki.issue("node")


@pytest.fixture
def tls_env(pki: Pki, node_cert: Issued) -> dict[str, str]:
    """The settings of a TLS node (wss:// and gRPC over TLS) with the test CA."""
    return {
        "PUSHSVC_TLS_CERT": str(node_cert.cert),
        "PUSHSVC_TLS_KEY": str(node_cert.key),
        "PUSHSVC_TLS_CA": str(pki.ca),
    }
