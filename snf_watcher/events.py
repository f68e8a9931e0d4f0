"""Outbox messages as typed events for delivery, each with its place in time.

`parse` turns one stored message into an event, a `Skip` (not ours to apply:
a name without the instance prefix, a network that is not Synnefo's) or
raises `BadMessage` (it can never apply: a missing field, a wrong type).

The order key is what makes delivery converge: the master's event time, then
job id, op index and status rank, then a digest of the message itself, so
that any two distinct messages compare the same way wherever they come from
and an exact duplicate compares equal. Hooks and the job queue daemon both
stamp times with the master's clock; progress messages carry the clock of
the node running snf-image, but they only ever compete with each other.

Pure functions only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snf_watcher import messages

Key = tuple[int, int, int, int, int, int]  # sec, usec, job id, op index, status rank, digest

NIC_PREFIX = "snf-nic-"
NETWORK_PREFIX = "snf-net-"


class BadMessage(ValueError):
    """The message can never be applied; the text says why (it goes to the dead letters)."""


@dataclass(frozen=True)
class Skip:
    """A message that is not for this database; logged and dropped."""

    reason: str


@dataclass(frozen=True)
class GanetiNic:
    index: int
    nic_id: int | None  # from the Ganeti NIC name snf-nic-<id>; None: a NIC Synnefo does not know
    name: str | None
    network_id: int | None  # from the Ganeti network name snf-net-<id>
    mac: str | None
    ipv4: str | None


@dataclass(frozen=True)
class OpStatus:
    vm_id: int
    key: Key
    time: datetime
    job_id: int
    opcode: str
    status: str
    logmsg: str | None
    resize: tuple[int | None, int | None] | None  # (vcpus, ram MiB) of a set-params, else None


@dataclass(frozen=True)
class NetStatus:
    vm_id: int
    key: Key
    time: datetime
    nics: tuple[GanetiNic, ...]


@dataclass(frozen=True)
class Diagnostic:
    level: str
    source: str
    message: str
    details: str | None


@dataclass(frozen=True)
class Progress:
    vm_id: int
    key: Key
    time: datetime
    percentage: int | None  # image-copy-progress
    diagnostic: Diagnostic | None  # the others


@dataclass(frozen=True)
class NetworkStatus:
    network_id: int
    key: Key
    time: datetime
    job_id: int
    opcode: str
    status: str
    logmsg: str | None


@dataclass(frozen=True)
class Correction:
    """A reconciliation's fix (messages.correction): what Ganeti showed, for one aspect of a row."""

    vm_id: int
    key: Key
    time: datetime
    kind: str  # stale, operstate, build, flavor, nics, task
    expect_updated: datetime | None  # the row's `updated` when the difference was seen
    operstate: str | None = None
    flavor: tuple[int | None, int | None, int | None] | None = None  # vcpus, maxmem MiB, disk MiB
    nics: tuple[GanetiNic, ...] = ()
    job_id: int | None = None
    diagnostic: Diagnostic | None = None  # written with the fix, not when it is outdated


@dataclass(frozen=True)
class NetworkCorrection:
    """A reconciliation's fix of a network's db_backendnetwork row (messages.network_correction)."""

    network_id: int
    key: Key
    time: datetime
    kind: str  # network-stale (the network is gone: DELETED), network-unsynced (it is there: ACTIVE)
    expect_updated: datetime | None  # the row's `updated` when seen; None: there was no row


CORRECTION_KINDS = frozenset({"stale", "operstate", "build", "flavor", "nics", "task"})
NETWORK_CORRECTION_KINDS = frozenset({"network-stale", "network-unsynced"})
VmEvent = OpStatus | NetStatus | Progress | Correction
NetworkEvent = NetworkStatus | NetworkCorrection
Event = VmEvent | NetworkEvent


def parse(message: dict[str, Any], prefix: str) -> Event | Skip:
    """The event a stored message stands for."""
    if not isinstance(message, dict):
        raise BadMessage(f"a message is a JSON object, not {type(message).__name__}")
    kind = message.get("type")
    if kind == messages.NETWORK_STATUS:
        return _network_status(message)
    if kind == messages.RECONCILE and "network" in message:
        return _network_correction(message)
    name = _field(message, "instance", str)
    vm_id = id_from_name(name, prefix)
    if vm_id is None:
        return Skip(f"instance {name!r} is not named {prefix}<id>")
    if kind == messages.OP_STATUS:
        return _op_status(message, vm_id)
    if kind == messages.NET_STATUS:
        return _net_status(message, vm_id)
    if kind in messages.PROGRESS_TYPES:
        return _progress(message, vm_id)
    if kind == messages.WATCHER_DIAGNOSTIC:
        return _watcher_diagnostic(message, vm_id)
    if kind == messages.RECONCILE:
        return _correction(message, vm_id)
    raise BadMessage(f"unknown message type {kind!r}")


def id_from_name(name: str, prefix: str) -> int | None:
    """Synnefo's rule: the prefix followed by digits only (snf-12 yes, snf-12a no)."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    return int(rest) if rest.isascii() and rest.isdigit() else None


def order_key(message: dict[str, Any], time_pair: tuple[int, int]) -> Key:
    digest = hashlib.blake2b(
        json.dumps(message, sort_keys=True, separators=(",", ":")).encode(), digest_size=7
    ).digest()
    return (
        time_pair[0],
        time_pair[1],
        _int_or_zero(message.get("jobId")),
        _int_or_zero(message.get("opIndex")),
        messages.STATUS_RANK.get(message.get("status"), 0),  # type: ignore[arg-type]
        int.from_bytes(digest, "big"),
    )


def _int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _field(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadMessage(f"field {name!r} is {value!r}, expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _time(message: dict[str, Any]) -> tuple[tuple[int, int], datetime]:
    t = message.get("event_time")
    if not (
        isinstance(t, list)
        and len(t) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in t)
        and t[0] >= 0
        and 0 <= t[1] < 1_000_000
    ):
        raise BadMessage(f"event_time is {t!r}, expected [seconds, microseconds]")
    pair = (t[0], t[1])
    return pair, datetime.fromtimestamp(t[0] + t[1] / 1_000_000, UTC)


def _status_fields(message: dict[str, Any]) -> tuple[int, str, str, str | None]:
    job_id = _field(message, "jobId", int)
    if job_id < 0:
        raise BadMessage(f"jobId is {job_id}, expected a job id")
    opcode = _field(message, "operation", str)
    status = _field(message, "status", str)
    if status not in messages.STATUS_RANK:
        raise BadMessage(f"status {status!r} is not a Ganeti op status")
    logmsg = message.get("logmsg")
    return job_id, opcode, status, logmsg if isinstance(logmsg, str) else None


def _op_status(message: dict[str, Any], vm_id: int) -> OpStatus:
    pair, when = _time(message)
    job_id, opcode, status, logmsg = _status_fields(message)
    resize = None
    fields = message.get("job_fields")
    if opcode == "OP_INSTANCE_SET_PARAMS" and isinstance(fields, dict):
        beparams = fields.get("beparams")
        if isinstance(beparams, dict):
            vcpus = beparams.get("vcpus")
            ram = beparams.get("maxmem", beparams.get("memory"))
            vcpus = vcpus if isinstance(vcpus, int) and not isinstance(vcpus, bool) else None
            ram = ram if isinstance(ram, int) and not isinstance(ram, bool) else None
            if vcpus is not None or ram is not None:
                resize = (vcpus, ram)
    return OpStatus(vm_id, order_key(message, pair), when, job_id, opcode, status, logmsg, resize)


def _net_status(message: dict[str, Any], vm_id: int) -> NetStatus:
    pair, when = _time(message)
    return NetStatus(vm_id, order_key(message, pair), when, _ganeti_nics(_field(message, "nics", list)))


def _correction_kind(message: dict[str, Any], kinds: frozenset[str]) -> tuple[str, datetime | None]:
    kind = _field(message, "kind", str)
    if kind not in kinds:
        raise BadMessage(f"kind {kind!r} is not a correction the watcher makes")
    expect = message.get("expect_updated")
    try:
        return kind, datetime.fromisoformat(expect) if isinstance(expect, str) else None
    except ValueError:
        raise BadMessage(f"expect_updated is {expect!r}, expected an ISO 8601 time") from None


def _network_correction(message: dict[str, Any]) -> NetworkCorrection | Skip:
    subject = _network_subject(message)
    if isinstance(subject, Skip):
        return subject
    kind, expect_updated = _correction_kind(message, NETWORK_CORRECTION_KINDS)
    return NetworkCorrection(*subject, kind, expect_updated)


def _correction(message: dict[str, Any], vm_id: int) -> Correction:
    pair, when = _time(message)
    kind, expect_updated = _correction_kind(message, CORRECTION_KINDS)
    flavor = message.get("flavor")
    if flavor is not None and not (isinstance(flavor, list) and len(flavor) == 3):
        raise BadMessage(f"flavor is {flavor!r}, expected [vcpus, maxmem, disk]")
    nics = message.get("nics")
    job_id, text = message.get("jobId"), message.get("diagnostic")
    return Correction(
        vm_id,
        order_key(message, pair),
        when,
        kind,
        expect_updated,
        operstate=message.get("operstate") if isinstance(message.get("operstate"), str) else None,
        flavor=tuple(flavor) if flavor is not None else None,
        nics=_ganeti_nics(nics) if isinstance(nics, list) else (),
        job_id=job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None,
        diagnostic=Diagnostic("INFO", "snf-watcher", text[:255], text) if isinstance(text, str) else None,
    )


def _ganeti_nics(raw: list[Any]) -> tuple[GanetiNic, ...]:
    """The NIC list of a net-status message (or a NIC correction), in Ganeti's order."""
    nics = []
    for index, nic in enumerate(raw):
        if not isinstance(nic, dict):
            raise BadMessage(f"nics[{index}] is {nic!r}, expected an object")
        name = _opt_str(nic, "name", index)
        network = _opt_str(nic, "network", index)
        nics.append(
            GanetiNic(
                index=index,
                nic_id=id_from_name(name, NIC_PREFIX) if name else None,
                name=name,
                network_id=id_from_name(network, NETWORK_PREFIX) if network else None,
                mac=_opt_str(nic, "mac", index),
                ipv4=_opt_str(nic, "ip", index),
            )
        )
    return tuple(nics)


def _opt_str(nic: dict[str, Any], name: str, index: int) -> str | None:
    value = nic.get(name)
    if value is not None and not isinstance(value, str):
        raise BadMessage(f"nics[{index}].{name} is {value!r}, expected a string")
    return value or None


def _progress(message: dict[str, Any], vm_id: int) -> Progress:
    """Synnefo's rules for snf-image messages (logic/callbacks.py update_build_progress)."""
    pair, when = _time(message)
    key = order_key(message, pair)
    kind = message["type"]
    if kind == "image-copy-progress":
        value = message.get("progress")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise BadMessage(f"progress is {value!r}, expected a non-negative number")
        return Progress(vm_id, key, when, min(int(value), 100), None)
    source, level = kind, "DEBUG"
    text = message.get("messages", "")
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    text = text if isinstance(text, str) else str(text)
    subtype = message.get("subtype")
    if kind == "image-helper":
        if subtype in ("task-start", "task-end"):
            task = message.get("task")
            text = task if isinstance(task, str) else text
            source = f"{kind}-{subtype}"
        level = {"warning": "WARNING", "error": "ERROR", "info": "INFO"}.get(subtype, level)  # type: ignore[arg-type]
    level = {"image-error": "ERROR", "image-warning": "WARNING"}.get(kind, level)
    if not text.strip():
        text = " ".join(source.split("-")).capitalize()
    details = message.get("stderr")
    diagnostic = Diagnostic(level, source[:100], text[:255], details if isinstance(details, str) else None)
    return Progress(vm_id, key, when, None, diagnostic)


def _watcher_diagnostic(message: dict[str, Any], vm_id: int) -> Progress:
    pair, when = _time(message)
    level = _field(message, "level", str)
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise BadMessage(f"level is {level!r}, expected DEBUG, INFO, WARNING or ERROR")
    details = message.get("details")
    diagnostic = Diagnostic(
        level,
        "snf-watcher",
        _field(message, "message", str)[:255],
        details if isinstance(details, str) else None,
    )
    return Progress(vm_id, order_key(message, pair), when, None, diagnostic)


def _network_status(message: dict[str, Any]) -> NetworkStatus | Skip:
    subject = _network_subject(message)
    if isinstance(subject, Skip):
        return subject
    return NetworkStatus(*subject, *_status_fields(message))


def _network_subject(message: dict[str, Any]) -> tuple[int, Key, datetime] | Skip:
    """The network a message is about, with its place in time; Skip for a network not Synnefo's."""
    name = _field(message, "network", str)
    network_id = id_from_name(name, NETWORK_PREFIX)
    if network_id is None:
        return Skip(f"network {name!r} is not named {NETWORK_PREFIX}<id>")
    pair, when = _time(message)
    return network_id, order_key(message, pair), when
