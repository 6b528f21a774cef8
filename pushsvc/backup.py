"""Backing up a node's embedded store into a directory a node can start on
(``pushsvc backup PATH``).

The database is copied with SQLite's online backup API (``EmbeddedStore.backup``):
one consistent snapshot, taken while the node goes on serving. The copy is
checked (``PRAGMA quick_check``) before it is given its final name, so a
``pushsvc.db`` in the backup directory is always complete. The secrets the
node generated into its data directory (JWT secret, API key, admin token, the
owner-tag secret) are copied along, so a node started on the backup accepts the
tokens and keys issued before it, and knows which key pushed which message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pushsvc.errors import ConfigError, StoreUnavailable
from pushsvc.store.embedded import DB_FILENAME, EmbeddedStore

GENERATED_SECRETS = ("jwt-secret", "api-key", "admin-token", "owner-secret")


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    size: int  # bytes of the database copy
    messages: int
    seconds: float
    secrets: tuple[str, ...]  # generated secret files copied along


def backup_data_dir(data_dir: Path, target: Path) -> Backup:
    """Back up ``data_dir``'s store into ``target``, a new (or empty) directory.
    Raises ConfigError for what the operator must change, StoreUnavailable if the
    copy itself fails."""
    started = time.monotonic()
    source = data_dir / DB_FILENAME
    if not source.is_file():
        raise ConfigError(
            f"no embedded store at {source}: nothing to back up (is PUSHSVC_DATA_DIR right?)"
        )
    _prepare(target)
    partial = target / (DB_FILENAME + ".partial")
    final = target / DB_FILENAME
    try:
        store = EmbeddedStore(data_dir)
        try:
            store.backup(partial)
        finally:
            store.close()
        messages = _verify(partial)
        os.chmod(partial, 0o600)
        os.replace(partial, final)
    finally:
        for leftover in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{partial}{leftover}").unlink()
    copied = []
    for name in GENERATED_SECRETS:
        secret = data_dir / name
        if secret.is_file():
            fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as out, secret.open("rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            copied.append(name)
    _sync_dir(target)
    return Backup(target, final.stat().st_size, messages, time.monotonic() - started, tuple(copied))


def _prepare(target: Path) -> None:
    """A new directory (mode 0700: the copy holds payloads and secrets), or an empty one."""
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"{target} exists and is not a directory: give a new directory")
        if any(target.iterdir()):
            raise ConfigError(f"{target} is not empty: give a new or empty directory")
        return
    try:
        target.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {target}: {exc.strerror}") from None


def _verify(path: Path) -> int:
    """Check the copy's integrity; returns how many messages it holds."""
    try:
        conn = sqlite3.connect(str(path))  # read-write: closing it removes its -wal file
        try:
            (check,) = conn.execute("PRAGMA quick_check").fetchone()
            (messages,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the backup {path} cannot be read back: {exc}") from None
    if check != "ok":
        raise StoreUnavailable(f"the backup {path} failed its integrity check: {check}")
    return int(messages)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
