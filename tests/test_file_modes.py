"""Safe defaults on one host (issue 10, point 8): what a node writes is its own.

The embedded store's directory is created 0700 and every file in it -- the
database, its -wal and -shm files, the generated JWT secret and API key -- is
0600, so other users of the host can read neither messages nor credentials.
(Sharing the WebSocket port is in ``test_reuseport.py``.)
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from pushsvc.auth import load_or_create_secret
from pushsvc.store.embedded import EmbeddedStore
from pushsvc_client.v1 import push_pb2
from tests.nodeproc import NodeProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_node_keeps_its_data_directory_to_itself(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    # No secrets in the environment: the node generates them into the data directory.
    node = node_factory(env={"PUSHSVC_JWT_SECRET": "", "PUSHSVC_API_KEYS": ""}, start=False)
    node.data_dir = tmp_path / "deep" / "data"
    node.env["PUSHSVC_DATA_DIR"] = str(node.data_dir)
    node.start()
    data = node.data_dir
    key = (data / "api-key").read_text().strip()
    with node.stub() as stub:  # a write, so that the -wal file exists
        stub.Push(
            push_pb2.PushRequest(user_ids=["u"], payload=b"{}"),
            metadata=[("authorization", f"Bearer {key}")],
            timeout=20,
        )
    assert mode(data) == 0o700
    files = sorted(p.name for p in data.iterdir())
    for name in ("pushsvc.db", "pushsvc.db-wal", "pushsvc.db-shm", "jwt-secret", "api-key"):
        assert name in files, files
    for path in data.iterdir():
        assert mode(path) == 0o600, (path.name, oct(mode(path)))
    assert node.stop() == 0


def test_the_store_and_the_secrets_alone(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    try:
        assert mode(tmp_path / "store") == 0o700
        assert mode(store.path) == 0o600
    finally:
        store.close()
    secret, created = load_or_create_secret(tmp_path / "secrets" / "jwt-secret")
    assert created and secret
    assert mode(tmp_path / "secrets") == 0o700
    assert mode(tmp_path / "secrets" / "jwt-secret") == 0o600
    # An empty file left by something else gets the secret, and the mode.
    empty = tmp_path / "secrets" / "api-key"
    empty.touch(mode=0o644)
    empty.chmod(0o644)
    _, created = load_or_create_secret(empty)
    assert created and mode(empty) == 0o600
