"""The token revocation list as a node holds it: checked at every connect.

``RevokeToken`` stores an entry (durably: the fleet's list), applies it here
(the node closes the token's connections) and has the node hand it to every
peer, which applies it at once. Every node also reads the entries recorded
since its last look every ``REFRESH`` seconds (and all of them at start), so a
peer that missed the hand-over -- down, or not yet started -- applies it within
that time. The list in memory holds only unexpired entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from pushsvc.errors import InvalidArgument, StoreUnavailable
from pushsvc.health import StoreHealth, within
from pushsvc.store.revocation import Revocation, RevocationStore

log = logging.getLogger("pushsvc.revocations")

MAX_JTI_LEN = 256
MAX_REASON_BYTES = 100  # "token revoked: <reason>" fits a close frame
MAX_AHEAD = 366 * 86400.0  # the furthest expiry a revocation may have
REFRESH = 5.0  # seconds between reads of what changed
RETRY = 1.0  # seconds between attempts while the whole list has not been read yet
SKEW = 60.0  # seconds of clock difference between nodes tolerated by those reads
READ_TIMEOUT = 5.0


def revocation_from_request(jti: str, expires_at: float, reason: str) -> Revocation:
    """A checked RevokeToken request; InvalidArgument says what is wrong."""
    if not jti or len(jti) > MAX_JTI_LEN or any(ord(c) < 32 for c in jti):
        raise InvalidArgument(
            f"jti must be 1 to {MAX_JTI_LEN} characters without control characters"
        )
    now = time.time()
    if expires_at <= now:
        raise InvalidArgument(
            "expires_at must be in the future: the token's expiry (its exp), in unix seconds"
        )
    if expires_at > now + MAX_AHEAD:
        raise InvalidArgument("expires_at is more than a year ahead")
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise InvalidArgument(
            f"reason is over {MAX_REASON_BYTES} bytes (it travels in a close frame)"
        )
    return Revocation(jti, float(expires_at), reason, now)


class Revocations:
    def __init__(
        self,
        store: RevocationStore,
        health: StoreHealth,
        on_revoked: Callable[[Revocation], int],
    ) -> None:
        self._store = store
        self._health = health
        self._on_revoked = on_revoked
        self._entries: dict[str, float] = {}  # jti -> expires_at
        # Connections a refresh closed, not yet counted in an answer to the revoking
        # node (whose hand-over may arrive after this node read the list itself).
        self._unreported: dict[str, int] = {}
        self._read_at: float | None = None  # the last read covered what was recorded since
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Keep reading what changes (``refresh`` first reads the whole list)."""
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def revoked(self, jti: str) -> bool:
        expires = self._entries.get(jti)
        return expires is not None and expires > time.time()

    def add(self, revocation: Revocation) -> int:
        """Store it (raises StoreUnavailable), then apply it here."""
        self._store.add(revocation)
        return self.apply(revocation)

    def apply(self, revocation: Revocation) -> int:
        """An entry handed over by a call: refuse its token from now on and close its
        connections (``on_revoked``); how many were closed for it here and not yet
        reported (a refresh may have closed them first)."""
        closed = self._apply(revocation)
        return closed + self._unreported.pop(revocation.jti, 0)

    def _apply(self, revocation: Revocation) -> int:
        if revocation.expires_at <= time.time():
            return 0
        known = self._entries.get(revocation.jti)
        self._entries[revocation.jti] = max(known or 0.0, revocation.expires_at)
        # Known already: its connections were closed, and no new ones were let in.
        return self._on_revoked(revocation) if known is None else 0

    @property
    def loaded(self) -> bool:
        """The whole list was read at least once."""
        return self._read_at is not None

    def refresh(self, timeout: float = READ_TIMEOUT) -> None:
        now = time.time()
        since = -1.0 if self._read_at is None else self._read_at - SKEW
        try:
            found = within(timeout, "the revocation list", self._store.since, since, now)
        except StoreUnavailable as exc:
            self._health.failed(exc)
            return
        self._read_at = now
        for revocation in found:
            closed = self._apply(revocation)
            if closed:
                self._unreported[revocation.jti] = closed
        for jti in [j for j, exp in self._entries.items() if exp <= now]:
            del self._entries[jti]
            self._unreported.pop(jti, None)

    def sweep(self, now: float) -> int:
        return self._store.sweep(now)

    def _run(self) -> None:
        while True:
            # The refresh's period (sooner while the list was never read), not synchronisation.
            gevent.sleep(REFRESH if self.loaded else RETRY)
            self.refresh()
