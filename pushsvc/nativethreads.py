"""Native threads in the node's gevent-patched process, for grpcio.

The node runs under ``gevent.monkey.patch_all()``: ``threading`` makes greenlets,
and locks and queues cooperate with the event loop. grpcio is the exception. Its
completion queues block in C, and under ``grpc.experimental.gevent`` every event
of every call crosses from a helper thread to the loop and back (py-spy put about a
third of the node's samples on one-message pushes in those crossings). So grpcio
keeps native threads here -- its server's poller, its pool of handler threads,
its channels -- and the node hands each call to the event loop once
(``handoff``). Nothing else is unpatched: the store drivers, the admin server and
every node module still see gevent's ``threading``.

``install_into_grpc`` gives grpcio's modules a private copy of the standard
``threading`` built on the native ``_thread``; ``ThreadPool`` is the executor
grpcio's server runs its handlers on.

``classic_grpc_io`` picks grpcio's I/O before grpcio is loaded. From grpcio 1.80
its Python servers and channels run their sockets on its EventEngine, whose own
threads read and write and hand each event on to the thread waiting on the
completion queue. The completion-queue poller grpcio's Python used before (still
in grpcio, behind its ``GRPC_EXPERIMENTS`` switches) reads and writes in that
waiting thread. Pinned to one core, the poller serves a bare echo's unary calls
at 177-189 µs of CPU each against 227-251 µs, and a stream's messages at 117-120
against 155-164 (``bench/RESULTS.md``, "grpcio's I/O"); a node's unary ``Push``
258 against 313, ``PushStream`` 169 against 201. The node runs the poller unless
its environment sets ``GRPC_EXPERIMENTS``.
"""

from __future__ import annotations

import _queue
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original

log = logging.getLogger("pushsvc.grpc")

# What gevent replaces in ``_thread`` (the originals are kept whether or not it did).
_THREAD_NAMES = (
    "LockType",
    "_local",
    "allocate_lock",
    "exit",
    "get_ident",
    "stack_size",
    "start_new_thread",
)
allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
get_ident: Callable[[], int] = get_original("_thread", "get_ident")
start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
SimpleQueue = _queue.SimpleQueue  # the C queue: gevent patches ``queue.SimpleQueue`` only

# grpcio's modules that use ``threading`` (those not imported are skipped).
GRPC_MODULES = (
    "grpc",
    "grpc._channel",
    "grpc._common",
    "grpc._server",
    "grpc._utilities",
    "grpc._plugin_wrapping",
    "grpc._simple_stubs",
    "grpc._observability",
    "grpc._cython.cygrpc",
)

# grpcio's switches back to its completion-queue poller (``classic_grpc_io``).
CLASSIC_IO = "-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_client"
EVENT_ENGINE_FROM = (1, 80)  # the first grpcio whose Python runs on its EventEngine

_threading: types.ModuleType | None = None


def grpcio_version() -> tuple[int, ...]:
    """The installed grpcio's version, read without loading it ((0,) if unknown)."""
    try:
        text = importlib.metadata.version("grpcio")
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())  # "0rc1" -> 0
        parts.append(int(digits or 0))
    return tuple(parts)


def classic_grpc_io(environ: Any = os.environ) -> bool:
    """Before grpcio is loaded: have it run its sockets on its completion-queue
    poller, not its EventEngine (see the module's text), by setting
    ``GRPC_EXPERIMENTS``. Left alone when the environment sets it already, when
    grpcio predates its EventEngine (the poller is its only I/O), and once grpcio
    is loaded (too late: its core reads the variable when it starts). Whether the
    switch was set."""
    if "GRPC_EXPERIMENTS" in environ or grpcio_version() < EVENT_ENGINE_FROM:
        return False
    if "grpc._cython.cygrpc" in sys.modules:
        log.debug("grpcio is loaded already: its I/O stays as it is")
        return False
    environ["GRPC_EXPERIMENTS"] = CLASSIC_IO
    return True


def threading_module() -> types.ModuleType:
    """A private copy of the standard ``threading`` whose threads, locks and
    conditions are native whatever gevent patched (made once)."""
    global _threading
    if _threading is None:
        import _thread

        native = types.ModuleType("_thread")
        native.__dict__.update(vars(_thread))
        for name, original in zip(
            _THREAD_NAMES, get_original("_thread", list(_THREAD_NAMES)), strict=True
        ):
            setattr(native, name, original)
        spec = importlib.util.find_spec("threading")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        saved = sys.modules["_thread"]
        sys.modules["_thread"] = native  # what the copy's ``import _thread`` finds
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules["_thread"] = saved
        _threading = module
    return _threading


def install_into_grpc() -> None:
    """Point grpcio's modules at native ``threading`` (before any server or channel
    is made). Without ``grpc.experimental.gevent``'s ``init_gevent``: grpcio's
    calls then block the thread that makes them, so the node makes them from
    native threads only (its servers' handler pool, a thread pool for the calls
    it makes to peers)."""
    native = threading_module()
    for name in GRPC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "threading", None) is not None:
            module.threading = native  # type: ignore[attr-defined]


def cooperate() -> None:
    """The node's process: gevent patches the standard library, grpcio keeps
    native threads and runs on its completion-queue poller. Call before anything
    of the node is imported."""
    import gevent
    from gevent import monkey

    # Greenlets do not record who spawned them, nor the spawning stack: spawns
    # are cheaper, and a connection's greenlet holds a few objects fewer for
    # the garbage collector's full passes to visit (nothing reads them).
    gevent.config.track_greenlet_tree = False
    monkey.patch_all()
    classic_grpc_io()
    install_into_grpc()


class _Work:
    __slots__ = ("args", "callbacks", "done", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.callbacks: list[Callable[[Any], None]] = []
        self.done = False


class Submitted:
    """What ``ThreadPool.submit`` returns: grpcio only adds a done callback."""

    __slots__ = ("_lock", "_work")

    def __init__(self, work: _Work, lock: Any) -> None:
        self._work = work
        self._lock = lock

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._work.done:
                self._work.callbacks.append(fn)
                return
        fn(self)


class ThreadPool:
    """An executor of native threads, started as work needs them (up to
    ``max_workers``) and kept: what grpcio's server runs each call's handler on.

    ``submit`` hands work to an idle thread if one is waiting and starts a new
    thread otherwise; at ``max_workers`` work waits in line for the next thread
    that finishes (as with ``concurrent.futures.ThreadPoolExecutor``)."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._lock = allocate_lock()
        self._queue: Any = SimpleQueue()
        self._idle = 0
        self._threads = 0

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Submitted:
        work = _Work(fn, args, kwargs)
        with self._lock:
            start = False
            if self._idle:
                self._idle -= 1  # that thread takes it
            elif self._threads < self.max_workers:
                self._threads += 1
                start = True
        self._queue.put(work)
        if start:
            start_new_thread(self._worker, ())
        return Submitted(work, self._lock)

    def _worker(self) -> None:
        while True:
            work = self._queue.get()
            try:
                work.fn(*work.args, **work.kwargs)
            except BaseException:  # grpcio's behaviours answer their own errors
                log.exception("grpc handler thread: unexpected error")
            with self._lock:
                work.done = True
                callbacks, work.callbacks = work.callbacks, []
            submitted = Submitted(work, self._lock)
            for fn in callbacks:
                try:
                    fn(submitted)
                except Exception:
                    log.exception("grpc handler thread: a done callback failed")
            work.fn = work.args = work.kwargs = None
            with self._lock:
                self._idle += 1
