"""Synnefo's message formats, built from plain values.

These are the messages Synnefo's dispatcher understands (DESIGN section 6); the
producers (job queue daemon, hooks, progress monitor) call these builders so the
shape of each message is written down exactly once. `opIndex` is our addition:
with the master's event time, the job id and the status it orders a stream
totally, which is what lets delivery converge under duplication and reordering.

Pure functions only: no I/O, no clock (callers pass the time in).
"""

from __future__ import annotations

OP_STATUS = "ganeti-op-status"
NETWORK_STATUS = "ganeti-network-status"
NET_STATUS = "ganeti-net-status"
# Ours, not Synnefo's: what the watcher did to a VM, for its diagnostics list; and a
# reconciliation's correction of a row, stamped with the master's clock.
WATCHER_DIAGNOSTIC = "snf-watcher-diagnostic"
RECONCILE = "snf-watcher-reconcile"
PROGRESS_TYPES = frozenset(
    {"image-copy-progress", "image-info", "image-warning", "image-error", "image-helper"}
)

Timestamp = list[int]  # [seconds, microseconds], as Ganeti writes them

# Ganeti's op statuses in the order one op passes through them (canceling and
# running are alternatives). The producer reports a status only when it ranks
# above what it reported for that op; delivery orders a stream by it.
STATUS_RANK = {
    "queued": 0,
    "waiting": 1,
    "canceling": 2,
    "running": 3,
    "canceled": 4,
    "success": 4,
    "error": 4,
}
FINAL_STATUSES = frozenset({"canceled", "success", "error"})


def split_time(seconds: float) -> Timestamp:
    """A float epoch as Ganeti's [sec, usec] pair."""
    sec = int(seconds)
    return [sec, int(round((seconds - sec) * 1_000_000)) % 1_000_000]


def op_status(*, instance: str, tags: list[str], **status: object) -> dict[str, object]:
    """A `ganeti-op-status` message: one status of one opcode acting on one instance."""
    return {"type": OP_STATUS, "instance": instance, **_status(**status), "tags": tags}


def network_status(*, network: str, **status: object) -> dict[str, object]:
    """A `ganeti-network-status` message: one status of one opcode on a Ganeti network."""
    return {"type": NETWORK_STATUS, "network": network, **_status(**status)}


def _status(
    *,
    operation: str,
    status: str,
    job_id: int,
    op_index: int,
    logmsg: str | None,
    result: object,
    event_time: Timestamp,
    cluster: str | None,
    job_fields: dict[str, object],
) -> dict[str, object]:
    """The fields every job status message has, under Synnefo's names."""
    return {
        "operation": operation,
        "status": status,
        "jobId": job_id,
        "opIndex": op_index,
        "logmsg": logmsg,
        "result": result,
        "event_time": event_time,
        "cluster": cluster,
        "job_fields": job_fields,
    }


def net_status(
    *,
    instance: str,
    nics: list[dict[str, object]],
    event_time: Timestamp,
    cluster: str | None,
    operation: str | None,
    hook_path: str,
) -> dict[str, object]:
    """A `ganeti-net-status` message: the complete NIC list of an instance after an operation."""
    return {
        "type": NET_STATUS,
        "instance": instance,
        "nics": nics,
        "event_time": event_time,
        "cluster": cluster,
        "operation": operation,
        "hook": hook_path,
    }


def progress(instance: str, event: dict[str, object], event_time: Timestamp) -> dict[str, object]:
    """A progress message from snf-image: its own fields plus instance and time.

    Raises ValueError when *event* is not one of the types Synnefo accepts, so
    a garbled stream is reported instead of stored.
    """
    kind = event.get("type")
    if kind not in PROGRESS_TYPES:
        raise ValueError(f"unknown progress message type {kind!r}")
    if kind == "image-copy-progress" and not isinstance(event.get("progress"), (int, float)):
        raise ValueError("image-copy-progress without a numeric 'progress'")
    return {**event, "instance": instance, "event_time": event_time}


def watcher_diagnostic(
    *, instance: str, level: str, message: str, details: str | None, event_time: Timestamp
) -> dict[str, object]:
    """What the watcher did or gave up on, as a `db_virtualmachinediagnostic` row to be."""
    return {
        "type": WATCHER_DIAGNOSTIC,
        "instance": instance,
        "level": level,
        "message": message,
        "details": details,
        "event_time": event_time,
    }


def correction(
    *,
    instance: str,
    kind: str,
    event_time: Timestamp,
    expect_updated: str | None,
    operstate: str | None = None,
    flavor: list[int | None] | None = None,
    nics: list[dict[str, object]] | None = None,
    job_id: int | None = None,
    diagnostic: str | None = None,
) -> dict[str, object]:
    """A reconciliation's fix of one row; applied only if the row's `updated` is still *expect_updated*,
    and then with *diagnostic* as an INFO row in the VM's diagnostics."""
    return {
        "type": RECONCILE,
        "instance": instance,
        "kind": kind,
        "event_time": event_time,
        "expect_updated": expect_updated,
        "operstate": operstate,
        "flavor": flavor,
        "nics": nics,
        "jobId": job_id,
        "diagnostic": diagnostic,
    }


def network_correction(
    *, network: str, kind: str, event_time: Timestamp, expect_updated: str | None
) -> dict[str, object]:
    """A reconciliation's fix of a network's db_backendnetwork row (created if missing); applied only
    if the row's `updated` is still *expect_updated*."""
    return {
        "type": RECONCILE,
        "network": network,
        "kind": kind,
        "event_time": event_time,
        "expect_updated": expect_updated,
    }


def describe(m: dict[str, object]) -> str:
    """One line naming a message, for logs and listings."""
    subject = m.get("instance") or m.get("network") or "?"
    kind = m.get("type", "?")
    if kind in (OP_STATUS, NETWORK_STATUS):
        return f"{kind} {subject} job {m.get('jobId')} {m.get('operation')} {m.get('status')}"
    if kind == NET_STATUS:
        nics = m.get("nics")
        return f"{kind} {subject} {len(nics) if isinstance(nics, list) else '?'} NICs ({m.get('hook')})"
    if kind == RECONCILE:
        return f"{kind} {subject} {m.get('kind')}"
    if kind == WATCHER_DIAGNOSTIC:
        return f"{kind} {subject} {m.get('level')}: {m.get('message')}"
    return f"{kind} {subject}"
