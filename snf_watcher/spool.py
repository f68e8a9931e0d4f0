"""The outbox's inbox for short-lived writers: one file per message.

Ganeti waits on every hook, so a hook must neither import sqlite3 nor queue
behind the daemon's write lock. It drops each message into the spool as its own
file (`atomicfile`: temp name, fsync, rename, fsync of the directory), durable the
moment the hook returns and never waits for anyone. `Outbox.ingest_spool`
moves the files into the database in name order, which is arrival order.

This module is on the hook's hot path: standard library only, nothing heavy.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from snf_watcher import atomicfile

SUFFIX = ".msg"
_counter = itertools.count()


def spool_name(now_ns: int, pid: int, seq: int) -> str:
    """Names sort in arrival order; pid and seq keep concurrent writers apart."""
    return f"{now_ns:020d}-{pid:07d}-{seq:04d}{SUFFIX}"


def is_spool_name(name: str) -> bool:
    """Names `write` makes: a 20-digit time first (temp files start with a dot)."""
    return name.endswith(SUFFIX) and name[:20].isdigit()


def write(spool_dir: str, message: dict[str, object]) -> str:
    """Store *message* durably in *spool_dir*; return the final path."""
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    final = os.path.join(spool_dir, spool_name(time.time_ns(), os.getpid(), next(_counter)))
    try:
        atomicfile.write(final, data, 0o600)
    except FileNotFoundError:  # before the daemon's first start: make it rather than lose the message
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        atomicfile.write(final, data, 0o600)
    return final


def names(spool_dir: str, before_ns: int | None = None) -> list[str]:
    """The message files waiting in the spool, oldest first; none if it does not exist yet.

    A directory listing taken during renames is no snapshot: it may show a
    writer's newer file and miss its older one. With *before_ns* (a clock
    reading taken before calling), only files named before that time are
    returned. A writer names its next file only after renaming the previous
    one, so those are all visible, and each writer's order is kept; younger
    files wait for the next call.
    """
    try:
        found = [n for n in os.listdir(spool_dir) if is_spool_name(n)]
    except FileNotFoundError:
        return []
    if before_ns is not None:
        found = [n for n in found if int(n[:20]) < before_ns]
    return sorted(found)


def read(path: str) -> dict[str, object]:
    """One spool file's message. Raises OSError, or ValueError when it is not a message."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        message = json.loads(f.read())
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("not a message object with a 'type'")
    return message
