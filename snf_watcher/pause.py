"""Pausing the watcher: our own pause file, and Ganeti's `gnt-cluster watcher pause`.

An operator doing maintenance stops the watcher from restarting VMs with
`snf-watcher pause` (our JSON file: until, reason, since) or with Ganeti's own
command, which pauses Ganeti's watcher through its `watcher.pause` file (an
epoch as text). Both are honoured, because an operator who paused "the
watcher" the Ganeti way means ours too.

A pause file that cannot be read is reported and ignored: a broken file must
not silently stop VM restarts for good, nor crash the pass. Ganeti's file is
Ganeti's to clean up; we never touch it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from snf_watcher import atomicfile

GANETI_REASON = "gnt-cluster watcher pause"


@dataclass(frozen=True)
class Pause:
    until: float | None  # epoch; None = until resumed
    reason: str
    source: str  # the file it came from
    since: float | None = None


def read(our_file: str, ganeti_file: str, now: float) -> tuple[Pause | None, list[str]]:
    """The pause in force at *now* (the longer one if both files hold one), and problems; never raises."""
    problems: list[str] = []
    found = [_read_ours(our_file, problems), _read_ganeti(ganeti_file, problems)]
    active = [p for p in found if p is not None and (p.until is None or now < p.until)]
    if not active:
        return None, problems
    return max(active, key=lambda p: math.inf if p.until is None else p.until), problems


def write(our_file: str, until: float | None, reason: str, now: float) -> Pause:
    """Pause until *until* (None: until resumed), replacing any pause of ours; the directory is made 0700."""
    if until is not None and not (math.isfinite(until) and until > now):
        raise ValueError(f"a pause must end after it starts (now {now}, until {until})")
    data = json.dumps({"until": until, "reason": reason, "since": now}, sort_keys=True).encode() + b"\n"
    os.makedirs(os.path.dirname(os.path.abspath(our_file)), mode=0o700, exist_ok=True)
    atomicfile.write(our_file, data, 0o600)
    return Pause(until, reason, our_file, since=now)


def remove(our_file: str) -> bool:
    """Remove our pause file; True if there was one (Ganeti's pause, if any, stays)."""
    try:
        os.unlink(our_file)
    except FileNotFoundError:
        return False
    return True


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
LONGEST = 100 * 366 * 86400
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "2h", "1d", "1h30m" (units d, h, m, s, largest first, each once)."""
    compact = text.strip().lower()
    parts = _PART.findall(compact) if _DURATION.fullmatch(compact) else []
    units = [unit for _, unit in parts]
    if not parts or units != sorted(set(units), key=list(_UNITS).index):
        raise ValueError(
            f"{text!r} is not a duration: use numbers with units d, h, m, s, largest first, "
            "e.g. 90s, 30m, 2h, 1d, 1h30m"
        )
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration: it must be longer than 0 seconds")
    if seconds > LONGEST:  # beyond any date we can write; and "forever" has its own spelling
        raise ValueError(f"{text!r} is longer than 100 years: leave out --for to pause until resumed")
    return seconds


# ---------------------------------------------------------------- the two files


def _read_ours(path: str, problems: list[str]) -> Pause | None:
    raw = _read(path, problems)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        problems.append(f"{path}: not valid JSON ({e}); ignored, not paused by it")
        return None
    try:
        return Pause(_until(data), _reason(data), path, _since(data))
    except ValueError as e:
        problems.append(f"{path}: {e}; ignored, not paused by it")
        return None


def _read_ganeti(path: str, problems: list[str]) -> Pause | None:
    raw = _read(path, problems)
    if raw is None:
        return None
    try:
        until = float(raw.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        problems.append(f"{path}: expected an epoch, got {raw[:40]!r}; ignored, not paused by it")
        return None
    if not math.isfinite(until):
        problems.append(f"{path}: expected an epoch, got {raw[:40]!r}; ignored, not paused by it")
        return None
    return Pause(until, GANETI_REASON, path, since=_mtime(path))


def _read(path: str, problems: list[str]) -> bytes | None:
    """The file's bytes; None (with a problem unless it is just missing) when it cannot be read."""
    try:
        return atomicfile.read(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            problems.append(f"{path} is a symlink; not read (a pause file is never read through a link)")
        else:
            problems.append(f"{path}: cannot read: {e.strerror}; ignored, not paused by it")
        return None


def _until(data: Any) -> float | None:
    if not isinstance(data, dict) or "until" not in data:
        raise ValueError("expected an object with an 'until' key")
    return _optional_epoch(data["until"], "until")


def _reason(data: dict[str, Any]) -> str:
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError(f"reason: expected a string, got {reason!r}")
    return reason


def _since(data: dict[str, Any]) -> float | None:
    return _optional_epoch(data.get("since"), "since")


def _optional_epoch(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected an epoch or null, got {value!r}")
    return float(value)


def _mtime(path: str) -> float | None:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None
