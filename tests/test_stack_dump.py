"""SIGUSR1: a node writes every thread's Python stack to its stderr (the journal
under systemd) from the signal handler itself, and goes on serving."""

from __future__ import annotations

import signal

from tests.nodeproc import NodeProcess
from tests.waiting import wait_for


def test_sigusr1_writes_every_threads_stack_and_the_node_goes_on(node: NodeProcess) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGUSR1)
    log = wait_for(
        lambda: "Current thread" in (text := node.log()) and text,
        timeout=60,
        what="the stack dump in the node's stderr",
    )
    dump = log[log.index("Thread 0x") if "Thread 0x" in log else log.index("Current thread") :]
    assert "(most recent call first)" in dump and 'File "' in dump, dump
    # The event loop's thread is among them: the main one, in gevent's hub or in a
    # greenlet it runs (which one depends on the moment the signal came).
    current = dump[dump.index("Current thread") :].split("\n\n")[0]
    assert "/gevent/" in current, dump
    assert node.proc.poll() is None
    assert node.ready()["ready"] is True
