"""Files that are either wholly old or wholly new, even across a crash or a power cut.

A reader (or the next run after a SIGKILL) must never find half a state file,
half a spool message or half a metrics file. So the data go to a temp file in
the same directory (a dot name: nothing globbing the directory picks it up),
which is fsynced and renamed over the target, and the directory is fsynced so
the rename itself survives. rename(2) replaces whatever is at the target,
including a planted symlink, so nothing is ever written through a link.

The Ganeti hook imports this on every Ganeti operation: only modules the
interpreter has loaded at startup anyway.
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace *path* by a file holding *data* with permissions *mode*, atomically and durably.

    Raises OSError (e.g. FileNotFoundError when the directory does not exist);
    the temp file is gone then and *path* is as it was.
    """
    directory, name = os.path.split(path)
    tmp, fd = _create(directory, name, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly *mode*, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory or ".")


def read(path: str) -> bytes:
    """The content of the regular file at *path*, never through a symlink.

    Raises FileNotFoundError when it is missing, OSError with errno ELOOP when
    *path* is a symlink, and OSError with errno EINVAL when it is not a regular
    file (a FIFO planted there must not hang the reader).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_temps(path: str) -> list[str]:
    """Remove the temp files that writes of *path* left behind when killed; return their names.

    Only while nobody else can be writing *path* (e.g. under its lock):
    another writer's temp file would go too, and its rename fail.
    """
    directory, name = os.path.split(path)
    removed = []
    for entry in os.listdir(directory or "."):
        if _is_temp_of(entry, name):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def _is_temp_of(entry: str, name: str) -> bool:
    """Whether *entry* is a name `_create` makes for *name*."""
    prefix = f".{name}."
    pid, _, rest = entry[len(prefix) :].partition(".")
    return entry.startswith(prefix) and pid.isdigit() and len(rest) == 12 and rest.endswith(".tmp")


def _create(directory: str, name: str, mode: int) -> tuple[str, int]:
    """A new temp file beside *name*: `.<name>.<pid>.<random>.tmp`; returns its path and fd."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            return tmp, os.open(tmp, _FLAGS, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", os.path.join(directory, name))


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
