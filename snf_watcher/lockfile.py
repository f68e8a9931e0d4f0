"""Exclusive, non-blocking lock files that name their holder.

flock(2) on a file beside what it guards: the kernel drops the lock when the
holder dies, even by SIGKILL, so a stale lock can never block a restart.
The holder's pid and the time it took the lock are written into the file,
for the message of whoever finds it taken.
"""

from __future__ import annotations

import fcntl
import os
import time


class LockBusy(Exception):
    """Another process holds the lock: its pid and since when (epoch), as it wrote them."""

    def __init__(self, holder: str, since: float | None = None) -> None:
        super().__init__(holder)
        self.holder = holder
        self.since = since


def take(path: str) -> int:
    """Lock *path* (created 0600, never through a symlink); return the fd that holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        os.close(fd)
        raise LockBusy(text[0] if text else "?", _float(text[1]) if len(text) > 1 else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {time.time()!r}\n".encode(), 0)
    return fd


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
