"""FerretDB for the tests: the server (``bench/ferretdb.py``) and a session fixture.

``ferretdb`` shares one server between tests; give each test its own database
name. Import the fixture into a conftest with::

    from tests.ferretdb import ferretdb  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.ferretdb import FerretDB, FerretDBMissing, find_binary, free_port

__all__ = ["FerretDB", "FerretDBMissing", "ferretdb", "find_binary", "free_port"]


@pytest.fixture(scope="session")
def ferretdb() -> Iterator[FerretDB]:
    """One FerretDB for the test session. Fails (never skips) if it is not installed."""
    try:
        server = FerretDB()
    except FerretDBMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
