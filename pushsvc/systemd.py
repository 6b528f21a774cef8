"""systemd's notification protocol (``sd_notify``) without libsystemd.

A service with ``Type=notify`` finds the path of a unix datagram socket in
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace) and sends it
newline-separated ``KEY=value`` assignments:

- ``READY=1``    start-up is finished (listeners bound, node registered),
- ``STATUS=...`` one line shown by ``systemctl status``,
- ``WATCHDOG=1`` keep-alive; expected every ``$WATCHDOG_USEC`` microseconds,
- ``STOPPING=1`` the service is shutting down (draining).

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. Sending never
raises: a lost notification must not take the node down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("pushsvc.systemd")

__all__ = ["Notifier", "watchdog_interval"]


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock or anything else we do not speak


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` messages (half of ``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; any
    other process must not feed it.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "").strip())
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1e6 / 2


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", "").strip())
        self.watchdog_interval = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent."""
        if self.address is None:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification failed", extra={"error": str(exc)})
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
