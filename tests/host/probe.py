"""What the sandbox of pushsvc@.service allows, seen from inside it.

Run by systemd as ``pushsvc@probe.service``: the shipped unit with only
``ExecStart=`` replaced (a drop-in), so the same user, filesystem view, seccomp
filter and restrictions apply as to a node. Prints one JSON object on stdout (the
journal): per attempt, ``"allowed"`` or the errno name it failed with. Then it says
READY=1 like a node and waits for SIGTERM.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from pushsvc.systemd import Notifier

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
READ_IMPLIES_EXEC = 0x0400000
CLONE_NEWUSER = 0x10000000

libc = ctypes.CDLL(None, use_errno=True)


def attempt(action: Callable[[], Any]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "allowed"


def checked(result: int) -> None:
    """Raise OSError for a libc call that returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mmap_write_execute() -> None:
    mmap.mmap(-1, 4096, prot=PROT_READ | PROT_WRITE | PROT_EXEC)


def mprotect_execute() -> None:
    """Make a writable page executable: what a JIT does, and MDWE refuses."""
    page = mmap.mmap(-1, 4096, prot=PROT_READ | PROT_WRITE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    checked(libc.mprotect(ctypes.c_void_p(address), 4096, PROT_READ | PROT_EXEC))


def write(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("probe\n")
    os.unlink(path)


def main() -> int:
    state = os.environ.get("STATE_DIRECTORY", "/nonexistent")
    results: dict[str, Any] = {
        "uid": os.getuid(),
        # MemoryDenyWriteExecute=yes
        "mmap_write_execute": attempt(mmap_write_execute),
        "mprotect_execute": attempt(mprotect_execute),
        # SystemCallFilter=~@resources (raising one's own nice value needs no privilege)
        "setpriority": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
        # LockPersonality=yes
        "personality": attempt(lambda: checked(libc.personality(READ_IMPLIES_EXEC))),
        # RestrictNamespaces=yes (an unprivileged user namespace is otherwise allowed)
        "unshare_user": attempt(lambda: checked(libc.unshare(CLONE_NEWUSER))),
        # RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
        "socket_netlink": attempt(
            lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
        ),
        "socket_packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
        "socket_tcp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        # ProtectSystem=strict, StateDirectory=
        "write_usr": attempt(lambda: write("/usr/lib/pushsvc-probe")),
        "write_etc": attempt(lambda: write("/etc/pushsvc/probe")),
        "write_var_lib": attempt(lambda: write("/var/lib/pushsvc-probe")),
        "write_state": attempt(lambda: write(os.path.join(state, "probe"))),
        # ProtectHome=yes
        "list_home": attempt(lambda: os.listdir("/home")),
        # PrivateDevices=yes
        "dev": sorted(os.listdir("/dev")),
    }
    print(json.dumps(results), flush=True)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    Notifier().ready("probe done")
    signal.sigwait({signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
