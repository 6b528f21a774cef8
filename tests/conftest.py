"""Shared fixtures: real nodes on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pushsvc_client.v1 import push_pb2_grpc
from tests.nodeproc import NodeProcess
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
    channel = grpc.insecure_channel(node.grpc_addr)
    yield push_pb2_grpc.PushServiceStub(channel)
    channel.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """WebSocket clients a test opens (``clients.append(open_ws(...))``); closed at the end."""
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.close()
