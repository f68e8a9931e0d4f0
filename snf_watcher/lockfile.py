"""Exclusive, non-blocking lock files that name their holder.

flock(2) on a file beside the outbox: the kernel drops the lock when the
holder dies, even by SIGKILL, so a stale lock can never block a restart.
The holder's pid is written into the file, for the message of whoever
finds it taken.
"""

from __future__ import annotations

import fcntl
import os


class LockBusy(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it ("?" if unknown)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def take(path: str) -> int:
    """Lock *path* (created 0600, never through a symlink); return the fd that holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LockBusy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
