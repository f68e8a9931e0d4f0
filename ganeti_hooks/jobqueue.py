"""Ganeti job files: bytes in, job records and Synnefo messages out.

Everything here is pure. `parse_job` turns the bytes of a `job-<id>` file into
a `Job` or raises `JobParseError`, nothing else, whatever the bytes. `advance`
decides, from a job and what was already reported for it, which messages are
new; the daemon only stores what it returns. Facts this relies on are in
DESIGN section 3 (recorded from a real Ganeti 3.0.2 queue).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from snf_watcher import messages

JOB_NAME = re.compile(r"^job-(\d+)\Z")  # temp files also start with "job-"
JOBS_PER_ARCHIVE_DIR = 10000  # Ganeti's JSTORE_JOBS_PER_ARCHIVE_DIRECTORY
MAX_JOB_FILE = 64 * 1024 * 1024  # a job file bigger than this is refused unread

# A status is reported only when it ranks above everything reported before for
# its op (messages.STATUS_RANK), so rewrites and replays never report one twice.
STATUS_RANK = messages.STATUS_RANK
FINAL_STATUSES = messages.FINAL_STATUSES
NOTHING_REPORTED = -1

Timestamp = list[int]


class JobParseError(ValueError):
    """The bytes are not a Ganeti job; the message says what is wrong."""


class Op(NamedTuple):  # a NamedTuple, not a frozen dataclass: 4x cheaper to build in a catch-up
    index: int
    op_id: str
    status: str
    input: dict[str, Any]
    result: Any
    logmsg: str | None
    start_timestamp: Timestamp | None
    exec_timestamp: Timestamp | None
    end_timestamp: Timestamp | None

    @property
    def rank(self) -> int:
        return STATUS_RANK[self.status]


class Job(NamedTuple):
    id: int
    ops: tuple[Op, ...]
    received_timestamp: Timestamp | None
    end_timestamp: Timestamp | None

    @property
    def finished(self) -> bool:
        return all(op.status in FINAL_STATUSES for op in self.ops)


def job_id_from_name(name: str) -> int | None:
    m = JOB_NAME.match(name)
    return int(m.group(1)) if m else None


def archive_subdir(job_id: int) -> str:
    return str(job_id // JOBS_PER_ARCHIVE_DIR)


# ---------------------------------------------------------------- parsing


def check_size(size: int) -> None:
    """Refuse a job file too big to be one, before reading or parsing it."""
    if size > MAX_JOB_FILE:
        raise JobParseError(f"file is {size} bytes, more than the {MAX_JOB_FILE} allowed")


def parse_job(data: bytes) -> Job:
    """Parse the bytes of a job file. Raises JobParseError, and only that."""
    check_size(len(data))
    if not data.strip():
        raise JobParseError("file is empty")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise JobParseError("JSON nested too deeply") from None
    except ValueError as e:  # includes UnicodeDecodeError
        raise JobParseError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise JobParseError(f"top level is {type(doc).__name__}, not an object")
    job_id = doc.get("id")
    if not _is_int(job_id) or job_id < 0:
        raise JobParseError(f"'id' is {job_id!r}, not a job number")
    raw_ops = doc.get("ops")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise JobParseError("'ops' is missing or not a non-empty list")
    ops = tuple(_parse_op(i, raw) for i, raw in enumerate(raw_ops))
    return Job(
        id=job_id,
        ops=ops,
        received_timestamp=_timestamp(doc, "received_timestamp", "job"),
        end_timestamp=_timestamp(doc, "end_timestamp", "job"),
    )


def _parse_op(index: int, raw: Any) -> Op:
    where = f"op {index}"
    if not isinstance(raw, dict):
        raise JobParseError(f"{where} is not an object")
    inp = raw.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("OP_ID"), str):
        raise JobParseError(f"{where}: 'input' has no OP_ID")
    status = raw.get("status")
    if not isinstance(status, str) or status not in STATUS_RANK:
        raise JobParseError(f"{where}: unknown status {status!r}")
    log = raw.get("log", [])
    if not isinstance(log, list):
        raise JobParseError(f"{where}: 'log' is not a list")
    return Op(
        index=index,
        op_id=inp["OP_ID"],
        status=status,
        input=inp,
        result=raw.get("result"),
        logmsg=_last_log_message(log),
        start_timestamp=_timestamp(raw, "start_timestamp", where),
        exec_timestamp=_timestamp(raw, "exec_timestamp", where),
        end_timestamp=_timestamp(raw, "end_timestamp", where),
    )


def _last_log_message(log: list[Any]) -> str | None:
    """Log entries are [serial, [sec, usec], type, message]; Synnefo wants the last message."""
    if not log:
        return None
    last = log[-1]
    if not isinstance(last, list) or not last:
        return None
    msg = last[-1]
    return msg if isinstance(msg, str) else json.dumps(msg)


def _timestamp(obj: dict[str, Any], key: str, where: str) -> Timestamp | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is list and len(value) == 2:  # hot in a catch-up: no generators here
        sec, usec = value
        if type(sec) is int and type(usec) is int and sec >= 0 and 0 <= usec < 1_000_000:
            return value
    raise JobParseError(f"{where}: '{key}' is {value!r}, not [seconds, microseconds]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------- event times


def event_time(job: Job, op: Op) -> Timestamp | None:
    """When this op reached its current status, by the master's clock.

    queued: the job's receipt; waiting/canceling: the op's start; running: its
    execution start; final: its end. Missing ones fall back to the job's end;
    None means the caller must fall back to the file's mtime.
    """
    if op.status == "queued":
        ts = job.received_timestamp
    elif op.status in ("waiting", "canceling"):
        ts = op.start_timestamp
    elif op.status == "running":
        ts = op.exec_timestamp
    else:
        ts = op.end_timestamp
    return ts if ts is not None else job.end_timestamp


# ---------------------------------------------------------------- messages

_INSTANCE_JOB_FIELDS = ("nics", "disks", "beparams", "hvparams")
_NETWORK_JOB_FIELDS = {  # opcode input key -> message key, as Synnefo's eventd named them
    "network": "subnet",
    "gateway": "gateway",
    "network6": "subnet6",
    "gateway6": "gateway6",
    "add_reserved_ips": "add_reserved_ips",
    "remove_reserved_ips": "remove_reserved_ips",
    "group_name": "group_name",
}


def instance_of(op: Op) -> str | None:
    """The one instance an op acts on, or None (no instance, or several)."""
    inp = op.input
    if op.op_id.startswith("OP_INSTANCE_"):
        name = inp.get("instance_name")
        if isinstance(name, str) and name:
            return name
        names = inp.get("instances")
        if isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
            return names[0]
        return None
    if op.op_id in ("OP_TAGS_SET", "OP_TAGS_DEL") and inp.get("kind") == "instance":
        name = inp.get("name")
        return name if isinstance(name, str) and name else None
    return None


def network_of(op: Op) -> str | None:
    name = op.input.get("network_name")
    if op.op_id.startswith("OP_NETWORK_") and isinstance(name, str) and name:
        return name
    return None


def op_message(job: Job, op: Op, cluster: str | None, fallback_time: Timestamp) -> dict[str, Any] | None:
    """The Synnefo message for this op's current status, or None if Synnefo has no use for it."""
    when = event_time(job, op) or fallback_time
    common = {
        "operation": op.op_id,
        "status": op.status,
        "job_id": job.id,
        "op_index": op.index,
        "logmsg": op.logmsg,
        "result": op.result,
        "event_time": when,
        "cluster": cluster,
    }
    instance = instance_of(op)
    if instance is not None:
        fields = {}
        if op.op_id in ("OP_INSTANCE_CREATE", "OP_INSTANCE_SET_PARAMS"):
            fields = {k: op.input[k] for k in _INSTANCE_JOB_FIELDS if k in op.input}
        tags = op.input.get("tags")
        return messages.op_status(
            instance=instance,
            job_fields=fields,
            tags=tags if isinstance(tags, list) else [],
            **common,
        )
    network = network_of(op)
    if network is not None:
        fields = {out: op.input[k] for k, out in _NETWORK_JOB_FIELDS.items() if k in op.input}
        return messages.network_status(network=network, job_fields=fields, **common)
    return None


def message_key(job_id: int, op_index: int, status: str) -> str:
    """The outbox key of one (job, op, status): stored at most once."""
    return f"op:{job_id}:{op_index}:{status}"


@dataclass(frozen=True)
class Progress:
    """What a new version of a job file adds to the outbox."""

    new: list[tuple[str, dict[str, Any]]]  # (key, message) to insert
    refreshed: list[tuple[str, dict[str, Any]]]  # pending "running" messages with a newer log line
    reported: tuple[int, ...]  # per op, the highest status rank now reported


def advance(
    job: Job,
    reported: tuple[int, ...] | None,
    cluster: str | None,
    fallback_time: Timestamp,
) -> Progress:
    """Compare a job with what was reported for it before; return what is new.

    A status is new when it ranks above what was reported for that op, so a
    final status is reported exactly once however often the file is rewritten.
    A "running" rewrite (a new log line) refreshes the still-pending message.
    """
    if reported is None or len(reported) != len(job.ops):
        reported = (NOTHING_REPORTED,) * len(job.ops)
    new, refreshed, ranks = [], [], []
    for op, before in zip(job.ops, reported, strict=True):
        ranks.append(max(before, op.rank))
        if op.rank < before:
            continue
        msg = op_message(job, op, cluster, fallback_time)
        if msg is None:
            continue
        key = message_key(job.id, op.index, op.status)
        if op.rank > before:
            new.append((key, msg))
        elif op.status == "running":
            refreshed.append((key, msg))
    return Progress(new=new, refreshed=refreshed, reported=tuple(ranks))


# ---------------------------------------------------------------- high-water mark


def advance_hwm(hwm: int, marks: dict[int, Any], now: float, grace: float) -> int:
    """Move the high-water mark over jobs that are done for good.

    *marks* maps job ids above *hwm* to objects with `finished`, `received`
    and `error`. A job passes when it is finished, or when its file has been
    unreadable for *grace* seconds (Ganeti never rewrites a finished job, so
    it will not get better). An id that never appeared (a gap) passes only
    when the job after it was received *grace* seconds ago: a job submitted
    before that one would be on disk by now.
    """
    for job_id in sorted(k for k in marks if k > hwm):
        mark = marks[job_id]
        old_enough = mark.received is not None and now - mark.received >= grace
        if not (mark.finished or (mark.error and old_enough)):
            break
        if job_id != hwm + 1 and not old_enough:
            break
        hwm = job_id
    return hwm


def ts_seconds(ts: Timestamp | None) -> float | None:
    return None if ts is None else ts[0] + ts[1] / 1_000_000
