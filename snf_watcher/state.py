"""The watcher's memory between cron passes: restart attempts per instance, node boot ids.

One JSON file, replaced atomically (`atomicfile`) and guarded by a lock file
beside it (the state file itself is replaced by rename, so it cannot carry the
lock), so a pass killed at any moment leaves either the old or the new state.

The state only tunes restarts; it must never stop them. So `load` reports a
damaged, foreign or planted file as problems instead of raising, keeps every
record it can repair, and keeps the keys a newer version wrote (in `extra`),
so that downgrading and upgrading again loses nothing.

`parse` and `to_json` are pure; `load`, `save` and `lock` are the thin I/O.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snf_watcher import atomicfile, lockfile

VERSION = 1


@dataclass(frozen=True)
class Record:
    """One instance's restart history, keyed in State.instances by instance UUID (renames keep it)."""

    name: str  # instance name as last seen
    vm_id: int | None = None  # Synnefo VM id, when it is a Synnefo VM
    attempts: int = 0  # restart attempts charged to the budget
    first_failure: float | None = None  # epoch: first seen failed in this run of failures
    last_attempt: float | None = None  # epoch of the last startup job submitted
    last_job: int | None = None  # Ganeti job id of that startup
    last_job_status: str | None = None  # that job's status when last checked (None: not known yet)
    gave_up: float | None = None  # epoch when the budget ran out (None: still trying)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a newer version wrote: kept as they are

    @property
    def since(self) -> float | None:
        """What the record's age counts from: its last attempt, or (never attempted) its first failure."""
        return self.last_attempt if self.last_attempt is not None else self.first_failure

    def expired(self, now: float, expiration: float) -> bool:
        """Forgotten RETRY_EXPIRATION after `since`; a record with no time at all is forgotten too."""
        return self.since is None or now - self.since > expiration


@dataclass(frozen=True)
class State:
    instances: Mapping[str, Record] = field(default_factory=dict)  # by instance UUID
    nodes: Mapping[str, str] = field(default_factory=dict)  # node name -> boot id last seen
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown top-level keys, kept
    # Reconciliation: a record per finding ("<kind>:<vm id>") being fixed or confirmed (name,
    # vm_id, attempts, first_failure = first seen, last_attempt, gave_up), and where the
    # staggered checks go on (the last VM id checked).
    findings: Mapping[str, Record] = field(default_factory=dict)
    cursor: int = 0


# ---------------------------------------------------------------- pure: JSON <-> State

_TOP_KEYS = ("version", "instances", "nodes", "findings", "cursor")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a non-negative integer")
    return value


def _epoch(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError("a non-negative number (epoch seconds)")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _or_null(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


# Record's fields (all but `extra`) and how each is read; a bad value falls back to the field's default.
_FIELDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "name": (_text, ""),
    "vm_id": (_or_null(_count), None),
    "attempts": (_count, 0),
    "first_failure": (_or_null(_epoch), None),
    "last_attempt": (_or_null(_epoch), None),
    "last_job": (_or_null(_count), None),
    "last_job_status": (_or_null(_text), None),
    "gave_up": (_or_null(_epoch), None),
}


def parse(data: Any) -> tuple[State, list[str]]:
    """A State from a decoded state file, and what was wrong with it (dotted keys); never raises.

    Missing fields take their defaults, damaged ones are reset (or their
    record dropped) with a problem each, unknown keys are kept in `extra`.
    """
    if not isinstance(data, dict):
        return State(), [f"top level: expected an object, got {_kind(data)}; starting from an empty state"]
    problems = _version_notes(data)
    instances = _instances(data.get("instances", {}), problems)
    nodes = _nodes(data.get("nodes", {}), problems)
    findings = _instances(data.get("findings", {}), problems, "findings")
    try:
        cursor = _count(data.get("cursor", 0))
    except ValueError as e:
        problems.append(f"cursor: expected {e}, got {_show(data.get('cursor'))}; set to 0")
        cursor = 0
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
    return State(instances, nodes, findings=findings, cursor=cursor, extra=extra), problems


def to_json(state: State) -> dict[str, Any]:
    """The state file's JSON value; null fields are left out (they read back as null)."""
    return {
        **state.extra,
        "version": VERSION,
        "instances": {uuid: _record_json(r) for uuid, r in state.instances.items()},
        "nodes": dict(state.nodes),
        **({"findings": {k: _record_json(r) for k, r in state.findings.items()}} if state.findings else {}),
        **({"cursor": state.cursor} if state.cursor else {}),
    }


def _record_json(record: Record) -> dict[str, Any]:
    known = {key: getattr(record, key) for key in _FIELDS}
    return {**record.extra, **{k: v for k, v in known.items() if v is not None}}


def _version_notes(data: dict[str, Any]) -> list[str]:
    if "version" not in data:
        return ["no version key: a state file from an older version; missing fields take their defaults"]
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        return [f"version: expected an integer, got {_show(version)}; read as version {VERSION}"]
    written = f"written by state version {version} (this is version {VERSION})"
    if version < VERSION:
        return [f"{written}: missing fields take their defaults"]
    if version > VERSION:
        return [f"{written}: fields it added are kept unread"]
    return []


def _instances(data: Any, problems: list[str], where: str = "instances") -> dict[str, Record]:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected an object, got {_kind(data)}; all records dropped")
        return {}
    records = {uuid: _record(f"{where}.{uuid}", value, problems) for uuid, value in data.items()}
    return {uuid: r for uuid, r in records.items() if r is not None}


def _record(where: str, data: Any, problems: list[str]) -> Record | None:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected an object, got {_kind(data)}; record dropped")
        return None
    values = {}
    for key, (check, default) in _FIELDS.items():
        if key not in data:
            continue
        try:
            values[key] = check(data[key])
        except ValueError as e:
            got = _show(data[key])
            problems.append(f"{where}.{key}: expected {e}, got {got}; set to {json.dumps(default)}")
    extra = {k: v for k, v in data.items() if k not in _FIELDS}
    return Record(**{"name": "", **values}, extra=extra)


def _nodes(data: Any, problems: list[str]) -> dict[str, str]:
    if not isinstance(data, dict):
        problems.append(f"nodes: expected an object, got {_kind(data)}; boot ids dropped")
        return {}
    nodes = {}
    for name, boot_id in data.items():
        if isinstance(boot_id, str):
            nodes[name] = boot_id
        else:
            problems.append(f"nodes.{name}: expected a boot id string, got {_show(boot_id)}; dropped")
    return nodes


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- I/O


def load(path: str) -> tuple[State, list[str]]:
    """The state in *path* and its problems (each naming the file); a missing file is an empty state.

    Never raises for what is (or is not) in the file: a symlink planted at
    *path* is not followed, and damage is reported, not fatal.
    """
    try:
        raw = atomicfile.read(path)
    except FileNotFoundError:
        return State(), []
    except OSError as e:
        if e.errno == errno.ELOOP:
            return State(), [f"{path} is a symlink; not read (a state file is never read through a link)"]
        return State(), [f"{path}: cannot read: {e.strerror}; starting from an empty state"]
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return State(), [f"{path}: not valid JSON ({e}); starting from an empty state"]
    state, problems = parse(data)
    return state, [f"{path}: {p}" for p in problems]


def save(path: str, state: State) -> None:
    """Replace the state file by *state*, atomically (mode 0600; the directory is made 0700)."""
    data = json.dumps(to_json(state), indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    atomicfile.write(path, data, 0o600)


def lock(path: str) -> int:
    """Take the state's lock (`<path>.lock`); keep the returned fd open while using the state.

    Raises lockfile.LockBusy (holder pid, since) when another pass holds it.
    Once it is ours, no one else saves the state, so the temp files of a
    pass killed while saving are removed.
    """
    fd = lockfile.take(path + ".lock")
    try:
        atomicfile.remove_temps(path)
    except OSError:
        pass  # cannot list the directory: then save will say why
    return fd
