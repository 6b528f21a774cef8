"""One connection's outbound bytes.

Frames go straight to the socket with a non-blocking ``send()`` while the
connection keeps up: fan-out writes from its own loop, with no greenlet switch,
event or timer per frame. Only a connection whose socket would block gets a
queue (bounded, in frames) and a flusher greenlet, which drains it as the
socket becomes writable and exits when it is empty.

Before the welcome frame, message frames are held back (``hold``), so the
welcome is always the first data frame; control frames (pong, ping, close) go
out at once, which is what lets a connection answer pings from its first
moment.

A close is written after the frame in progress (a frame cut in the middle
would corrupt the stream), ahead of everything still queued when the queue is
dropped (a slow consumer sees its 4008 at once); if the close cannot be written
within a grace period, the socket is shut down so the peer sees the end anyway.

On a TLS connection (wss://) the non-blocking write goes through the TLS
session (``TLSSender``), never to the socket under it.
"""

from __future__ import annotations

import itertools
import socket
import ssl
from collections import deque
from typing import Any, Protocol

import gevent
from gevent.socket import wait_write

CLOSE_GRACE = 2.0  # seconds a close frame may take before the socket is cut
FLUSH_CHUNK = 256 * 1024  # bytes handed to one send() while draining a queue


# What a frame reports to the owner once written: the message id, seq and expiry of a
# stored message's frame (a delivery receipt); None for every other frame.
StoredFrame = tuple[str, int, float | None]
Delivery = StoredFrame | None


class Owner(Protocol):
    """Who hears about the writer's progress (the session)."""

    def frame_written(self, message_id: str, seq: int, expires_at: float | None) -> None:
        """A stored message's frame reached the socket: a delivery receipt."""

    def on_drained(self) -> None:
        """The queue that built up while the socket would block is empty again."""


class _Gone:
    """The owner of a stopped writer: the session holds its writer, so the writer
    lets go of the session when it stops, and both are freed without waiting for
    the cycle collector (a node's memory returns as soon as its clients leave)."""

    def frame_written(self, message_id: str, seq: int, expires_at: float | None) -> None:
        pass

    def on_drained(self) -> None:
        pass


GONE: Owner = _Gone()


class Sender(Protocol):
    def send(self, data: bytes, /) -> int: ...

    def fileno(self) -> int: ...


class TLSSender:
    """Non-blocking writes through a TLS session, with a socket's ``send()`` contract.

    OpenSSL writes a buffer whole or raises "want write"; in the second case it may
    already have encrypted and sent part of it, and the next write must start with
    the same bytes (it goes on from where it was). A plain socket's ``send()``
    instead says how much it took. So when a write would block, this reports all of
    ``data`` but its last byte as taken and keeps ``data``: the writer's next call
    starts with that last byte, and this writes the kept buffer again, unchanged,
    before anything new. At most one buffer (one flush chunk) is kept.
    """

    __slots__ = ("_fd", "_kept", "_tls")

    def __init__(self, sock: Any) -> None:
        self._tls = sock._sslobj  # gevent's SSLSocket: the session under the wrapper
        self._fd: int = sock.fileno()
        self._kept: bytes | None = None

    def fileno(self) -> int:
        return self._fd

    def send(self, data: bytes, /) -> int:
        kept = self._kept
        if kept is not None:
            # ``data`` starts with the last byte of ``kept``, the one not reported yet.
            try:
                self._tls.write(kept)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                raise BlockingIOError from None
            self._kept = None
            return 1
        try:
            written: int = self._tls.write(data)
            return written
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            if len(data) < 2:
                raise BlockingIOError from None  # retried with this byte first anyway
            self._kept = bytes(data)
            return len(data) - 1


def sender_of(sock: socket.socket) -> Sender:
    """What a non-blocking ``send()`` goes to: the TLS session of a wss:// connection,
    else the real socket under gevent's wrapper (its send() never waits)."""
    if getattr(sock, "_sslobj", None) is not None:
        return TLSSender(sock)
    raw: Sender = getattr(sock, "_sock", sock)
    return raw


class Writer:
    __slots__ = (
        "_closing",
        "_flusher",
        "_head_sent",
        "_held",
        "_limit",
        "_owner",
        "_queue",
        "_raw",
        "_sock",
        "dead",
    )

    def __init__(self, sock: socket.socket, limit: int, owner: Owner) -> None:
        self._sock = sock
        self._raw = sender_of(sock)
        self._limit = limit
        self._owner = owner
        # Queued while the socket would block: (bytes, message ids of its frames).
        # None while nothing waits: most connections never need one (a deque is
        # most of a kilobyte).
        self._queue: deque[tuple[bytes, tuple[StoredFrame, ...]]] | None = None
        self._head_sent = 0  # bytes of the queue's first element already written
        self._held: list[tuple[bytes, Delivery]] | None = []  # None once released
        self._flusher: gevent.Greenlet | None = None
        self._closing = False
        #: The socket failed or was shut down: nothing more is written.
        self.dead = False

    # -- writing ---------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Frames waiting for the socket (held ones included)."""
        return (len(self._queue) if self._queue else 0) + (len(self._held) if self._held else 0)

    def write(self, wire: bytes, delivery: Delivery = None) -> bool:
        """Send or queue one data frame. False when the connection is closing or
        the queue is full (the caller decides what an overflow means)."""
        if self._closing or self.dead:
            return False
        if self._held is not None:
            if len(self._held) >= self._limit:
                return False
            self._held.append((wire, delivery))
            return True
        if self._queue:
            if len(self._queue) >= self._limit:
                return False
            self._queue.append((wire, (delivery,) if delivery else ()))
            return True
        self._send_now(wire, (delivery,) if delivery else ())
        return True

    def write_many(self, frames: list[tuple[bytes, Delivery]]) -> bool:
        """Several data frames at once (a replay page): one send() when it fits."""
        if self._closing or self.dead:
            return False
        if self._held is not None or self._queue:
            return all(self.write(wire, d) for wire, d in frames)
        if len(frames) > self._limit:
            return False
        self._send_now(b"".join(w for w, _ in frames), tuple(d for _, d in frames if d))
        return True

    def write_joined(self, wires: tuple[bytes, ...], joined: bytes) -> bool:
        """Several data frames without receipts, ``joined`` their concatenation: one
        send() when the socket keeps up, else each frame queued on its own (the queue
        stays bounded in frames)."""
        if self._closing or self.dead:
            return False
        if self._held is not None or self._queue:
            return all(self.write(wire) for wire in wires)
        if len(wires) > self._limit:
            return False
        self._send_now(joined, ())
        return True

    def control(self, wire: bytes) -> None:
        """A control frame (ping, pong): never held, never refused for a full queue."""
        if self._closing or self.dead:
            return
        if self._queue:
            self._queue.append((wire, ()))
        else:
            self._send_now(wire, ())

    def release(self, first: bytes) -> None:
        """The welcome (``first``) goes out, then whatever was held back for it."""
        held, self._held = self._held or [], None
        if self._closing or self.dead:
            return
        self.write_many([(first, None), *held])

    def close(self, wire_close: bytes, drop_queued: bool) -> None:
        """Write the close frame after the frame in progress; with ``drop_queued``,
        ahead of the rest of the queue. The socket is cut after ``CLOSE_GRACE``."""
        if self._closing or self.dead:
            return
        self._closing = True
        self._held = None
        if drop_queued and self._queue:
            head = self._queue[0] if self._head_sent else None
            self._queue.clear()
            if head is not None:
                self._queue.append(head)
        if self._queue:
            self._queue.append((wire_close, ()))
        else:
            self._send_now(wire_close, ())
        gevent.get_hub().loop.timer(CLOSE_GRACE).start(self._cut)

    def _cut(self) -> None:
        """The close handshake did not finish in time: end the connection anyway."""
        if not self.dead:
            self.shutdown()

    def linger(self, timeout: float) -> None:
        """Give what is still queued (a close frame) up to ``timeout`` to go out."""
        flusher = self._flusher
        if flusher is not None and not self.dead:
            flusher.join(timeout)

    def shutdown(self) -> None:
        """Cut the connection: the reader sees the end and finishes the session."""
        self.dead = True
        self._queue = None
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self) -> None:
        """The session is over: no more writes, no flusher left running."""
        self.dead = True
        self._queue = None
        self._owner = GONE
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.dead and flusher is not gevent.getcurrent():
            flusher.kill(block=False)

    # -- the socket --------------------------------------------------------------------

    def _send_now(self, data: bytes, deliveries: tuple[StoredFrame, ...]) -> bool:
        """Write with one non-blocking send(); queue what the socket did not take.
        True when everything was written."""
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail()
            return False
        if sent == len(data):
            for message_id, seq, expires_at in deliveries:
                self._owner.frame_written(message_id, seq, expires_at)
            return True
        if self._queue is None:
            self._queue = deque()
        self._queue.append((data, deliveries))
        self._head_sent = sent
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush)
        return False

    def _flush(self) -> None:
        """Drain the queue as the socket takes it; exit when it is empty."""
        queue = self._queue
        try:
            while queue and not self.dead:
                wait_write(self._raw.fileno())
                if self.dead:
                    return
                data = self._pending_chunk(queue)
                try:
                    sent = self._raw.send(data)
                except BlockingIOError:
                    continue
                self._consume(queue, sent)
        except OSError:
            self._fail()
        finally:
            if self._flusher is gevent.getcurrent():
                self._flusher = None
        if not self._queue:
            self._queue = None
            if not self.dead and not self._closing:
                self._owner.on_drained()

    def _pending_chunk(self, queue: deque[tuple[bytes, tuple[StoredFrame, ...]]]) -> bytes:
        """The unsent bytes at the head of the queue, several frames joined."""
        first, _ = queue[0]
        parts = [memoryview(first)[self._head_sent :]]
        size = len(parts[0])
        for data, _ in itertools.islice(queue, 1, None):
            if size >= FLUSH_CHUNK:
                break
            parts.append(memoryview(data))
            size += len(data)
        return b"".join(parts)

    def _consume(self, queue: deque[tuple[bytes, tuple[StoredFrame, ...]]], sent: int) -> None:
        """Drop what ``sent`` bytes covered from the head of the queue."""
        left = self._head_sent + sent
        while queue:
            data, deliveries = queue[0]
            if left < len(data):
                break
            left -= len(data)
            queue.popleft()
            for message_id, seq, expires_at in deliveries:
                self._owner.frame_written(message_id, seq, expires_at)
        self._head_sent = left if queue else 0

    def _fail(self) -> None:
        self.dead = True
        self._queue = None
