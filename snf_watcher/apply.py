"""What a batch of events does to one VM or network: the functional core of delivery.

Each row has aspects (the last job seen, the operstate, the flavor, the NICs,
the volumes, the build progress), and each aspect remembers the order key of
the message that last wrote it (kept in our own table, `snf_watcher_order`).
A message writes an aspect only when its key is greater, so any duplication
or reordering of a stream ends in the state in-order delivery gives, and a
replayed old "running" can never overwrite a newer job's state (the weakness
of Synnefo's `backendtime` rule, DESIGN section 6).

Removal is terminal, as in Synnefo: it overwrites the aspects it touches
whatever their keys (in order, nothing after it would have been applied), and
afterwards only messages older than the removal still apply, to the aspects
the removal did not overwrite.

Pure functions only: rows in, plans out; syncdb.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from snf_watcher.events import (
    BadMessage,
    Correction,
    GanetiNic,
    Key,
    NetStatus,
    NetworkCorrection,
    NetworkEvent,
    NetworkStatus,
    OpStatus,
    Progress,
)
from snf_watcher.messages import FINAL_STATUSES

NO_KEY: Key = (-1, 0, 0, 0, 0, 0)
OPER_ON_SUCCESS = {
    "OP_INSTANCE_CREATE": "STARTED",
    "OP_INSTANCE_STARTUP": "STARTED",
    "OP_INSTANCE_REBOOT": "STARTED",
    "OP_INSTANCE_SHUTDOWN": "STOPPED",
    "OP_INSTANCE_REMOVE": "DESTROYED",
}
NETWORK_OPER_ON_SUCCESS = {
    "OP_NETWORK_ADD": "PENDING",
    "OP_NETWORK_CONNECT": "ACTIVE",
    "OP_NETWORK_DISCONNECT": "PENDING",
    "OP_NETWORK_REMOVE": "DELETED",
}
FAILED = frozenset({"error", "canceled"})
JOB_COLUMNS = ("backendjobid", "backendopcode", "backendjobstatus", "backendlogmsg")
BUILDING_NIC_GRACE = timedelta(seconds=60)  # a BUILD NIC younger than this may not be in Ganeti yet


@dataclass(frozen=True)
class Flavor:
    id: int
    cpu: int
    ram: int
    disk: int
    volume_type_id: int


class Flavors:
    """The flavor table, looked up the way Synnefo resizes: same disk and volume type."""

    def __init__(self, flavors: Iterable[Flavor]) -> None:
        self.by_id = {f.id: f for f in flavors}
        self.by_spec = {(f.cpu, f.ram, f.disk, f.volume_type_id): f.id for f in self.by_id.values()}

    def resized(self, flavor_id: int, vcpus: int | None, ram: int | None, disk: int | None = None) -> int:
        """The flavor a VM of *flavor_id* has after a change; what is None stays (disk in GiB)."""
        old = self.by_id.get(flavor_id)
        if old is None:
            raise BadMessage(f"the VM's flavor {flavor_id} is not in db_flavor")
        cpu, mem = vcpus if vcpus is not None else old.cpu, ram if ram is not None else old.ram
        size = disk if disk is not None else old.disk
        new = self.by_spec.get((cpu, mem, size, old.volume_type_id))
        if new is None:
            raise BadMessage(
                f"no flavor with {cpu} vCPUs, {mem} MiB RAM, {size} GiB disk "
                f"and volume type {old.volume_type_id} (resize from flavor {flavor_id})"
            )
        return new


@dataclass(frozen=True)
class NicsPlan:
    """What the NIC rows of a VM must become."""

    kind: Literal["match", "remove", "error"]  # match Ganeti's list / delete all / mark all ERROR
    time: datetime
    nics: tuple[GanetiNic, ...] = ()


@dataclass
class Plan:
    """The outcome of folding events into one row: final columns plus side effects."""

    columns: dict[str, Any]
    keys: dict[str, Key]
    nics: NicsPlan | None = None
    volumes: Literal["IN_USE", "ERROR", "DELETED"] | None = None
    diagnostics: list[tuple[Any, datetime]] = field(default_factory=list)
    applied: list[Any] = field(default_factory=list)
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    dead: list[tuple[Any, str]] = field(default_factory=list)

    def newer(self, aspect: str, key: Key) -> bool:
        return key > self.keys.get(aspect, NO_KEY)

    def ignored(self, key: Key, what: str) -> str | None:
        """Why the row takes no more messages of this age, if it does not."""
        if not self.columns["deleted"]:
            return None
        removed = self.keys.get("removed")
        if removed is None or key >= removed:
            return f"{what} is deleted"
        return None


class Outdated(Exception):
    """A correction for a row that changed since the difference was seen: not applied."""


def fold_vm(columns: dict[str, Any], keys: dict[str, Key], events: Iterable[Any], flavors: Flavors) -> Plan:
    """Apply a VM's events in key order to its row; *columns* are the row's current values."""
    return _fold(columns, keys, events, f"VM {columns['id']}", lambda plan, ev: _vm_event(plan, ev, flavors))


def fold_network(columns: dict[str, Any], keys: dict[str, Key], events: Iterable[NetworkEvent]) -> Plan:
    """Apply a network's events in key order to its db_backendnetwork row."""
    return _fold(columns, keys, events, f"network {columns['network_id']} on this backend", _network_event)


def _fold(
    columns: dict[str, Any],
    keys: dict[str, Key],
    events: Iterable[Any],
    what: str,
    step: Callable[[Plan, Any], None],
) -> Plan:
    """The loop both folds share: key order, nothing after a removal, bad messages set aside."""
    plan = Plan(dict(columns), dict(keys))
    for ev in sorted(events, key=lambda e: e.key):
        why = plan.ignored(ev.key, what)
        if why:
            plan.skipped.append((ev, why))
            continue
        try:
            step(plan, ev)
        except BadMessage as e:
            plan.dead.append((ev, str(e)))
            continue
        except Outdated as e:
            plan.skipped.append((ev, str(e)))
            continue
        plan.applied.append(ev)
        plan.columns["backendtime"] = max(plan.columns["backendtime"], ev.time)
    return plan


def _vm_event(plan: Plan, ev: Any, flavors: Flavors) -> None:
    if isinstance(ev, OpStatus):
        _op_status(plan, ev, flavors)
    elif isinstance(ev, NetStatus):
        if plan.newer("nics", ev.key):
            plan.nics, plan.keys["nics"] = NicsPlan("match", ev.time, ev.nics), ev.key
    elif isinstance(ev, Progress):
        _progress(plan, ev)
    elif isinstance(ev, Correction):
        _correction(plan, ev, flavors)
    else:
        raise BadMessage(f"{type(ev).__name__} is not a VM event")


def _job(plan: Plan, ev: OpStatus | NetworkStatus, remove_opcode: str) -> bool:
    """Record the op in the row's backendjob* columns; True when it removes the row.

    A remove that fails for a row in ERROR removes it too: Ganeti has no such
    object, which is why the remove failed (Synnefo's rule). A removal is
    terminal, so it writes the job columns whatever their key.
    """
    removal = ev.opcode == remove_opcode and (
        ev.status == "success" or (ev.status == "error" and plan.columns["operstate"] == "ERROR")
    )
    if removal or plan.newer("job", ev.key):
        plan.columns.update(zip(JOB_COLUMNS, (ev.job_id, ev.opcode, ev.status, ev.logmsg), strict=True))
        plan.keys["job"] = ev.key
    return removal


def _op_status(plan: Plan, ev: OpStatus, flavors: Flavors) -> None:
    cols = plan.columns
    flavor = None
    if ev.resize and ev.status == "success" and plan.newer("flavor", ev.key):
        flavor = flavors.resized(cols["flavor_id"], *ev.resize)  # first: an unknown flavor applies nothing
    removal = _job(plan, ev, "OP_INSTANCE_REMOVE")
    if ev.status in FINAL_STATUSES and cols["task_job_id"] == ev.job_id:
        cols["task"] = cols["task_job_id"] = None
    if removal:
        _remove(plan, ev)
        return
    creating = ev.opcode == "OP_INSTANCE_CREATE"
    state = OPER_ON_SUCCESS.get(ev.opcode) if ev.status == "success" else None
    if creating and ev.status in FAILED:
        state = "ERROR"
    if state and plan.newer("oper", ev.key):
        cols["operstate"], plan.keys["oper"] = state, ev.key
    if creating and ev.status in FINAL_STATUSES and plan.newer("volumes", ev.key):
        plan.volumes, plan.keys["volumes"] = ("IN_USE" if ev.status == "success" else "ERROR"), ev.key
    if creating and ev.status in FAILED and plan.newer("nics", ev.key):
        plan.nics, plan.keys["nics"] = NicsPlan("error", ev.time), ev.key
    if flavor is not None:
        cols["flavor_id"], plan.keys["flavor"] = flavor, ev.key


def _remove(plan: Plan, ev: OpStatus | Correction) -> None:
    """Terminal: the VM is gone, and so are its NICs and (unless detachable) volumes."""
    plan.columns.update(operstate="DESTROYED", deleted=True, backendtime=ev.time)
    plan.nics, plan.volumes = NicsPlan("remove", ev.time), "DELETED"
    for aspect in ("oper", "nics", "volumes", "removed"):
        plan.keys[aspect] = ev.key


def _correction(plan: Plan, ev: Correction, flavors: Flavors) -> None:
    """What reconciliation saw in Ganeti, for one aspect; an event newer than it wins.

    Applied only to the row as it was when the difference was seen: a row
    that Synnefo (or an event) changed meanwhile is judged again next pass.
    """
    cols = plan.columns
    if ev.expect_updated is not None and cols["updated"] != ev.expect_updated:
        raise Outdated(f"VM {cols['id']} changed since reconciliation saw it: judged again next pass")
    if ev.kind == "stale":
        _remove(plan, ev)
    elif ev.kind in ("operstate", "build") and ev.operstate and plan.newer("oper", ev.key):
        cols["operstate"], plan.keys["oper"] = ev.operstate, ev.key
        if ev.kind == "build" and plan.newer("volumes", ev.key):
            plan.volumes, plan.keys["volumes"] = ("ERROR" if ev.operstate == "ERROR" else "IN_USE"), ev.key
        if ev.kind == "build" and ev.operstate == "ERROR" and plan.newer("nics", ev.key):
            plan.nics, plan.keys["nics"] = NicsPlan("error", ev.time), ev.key
    elif ev.kind == "flavor" and ev.flavor and plan.newer("flavor", ev.key):
        vcpus, ram, disk = ev.flavor
        gib = disk // 1024 if disk is not None else None
        cols["flavor_id"], plan.keys["flavor"] = flavors.resized(cols["flavor_id"], vcpus, ram, gib), ev.key
    elif ev.kind == "nics" and plan.newer("nics", ev.key):
        plan.nics, plan.keys["nics"] = NicsPlan("match", ev.time, ev.nics), ev.key
    if ev.kind in ("task", "build") and ev.job_id is not None and cols["task_job_id"] == ev.job_id:
        cols["task"] = cols["task_job_id"] = None
    if ev.diagnostic is not None:
        plan.diagnostics.append((ev.diagnostic, ev.time))


def _progress(plan: Plan, ev: Progress) -> None:
    if ev.percentage is not None:
        if plan.newer("build", ev.key):
            plan.columns["buildpercentage"], plan.keys["build"] = ev.percentage, ev.key
    else:
        plan.diagnostics.append((ev.diagnostic, ev.time))


def _network_event(plan: Plan, ev: NetworkEvent) -> None:
    if isinstance(ev, NetworkCorrection):
        _network_correction(plan, ev)
    elif _job(plan, ev, "OP_NETWORK_REMOVE"):
        _network_removed(plan, ev)
    else:
        _network_status(plan, ev)


def _network_removed(plan: Plan, ev: NetworkEvent) -> None:
    plan.columns.update(operstate="DELETED", deleted=True, backendtime=ev.time)
    plan.keys["oper"] = plan.keys["removed"] = ev.key


def _network_correction(plan: Plan, ev: NetworkCorrection) -> None:
    """What reconciliation saw: the network gone from Ganeti (stale), or there and connected."""
    if ev.expect_updated is not None and plan.columns["updated"] != ev.expect_updated:
        raise Outdated(
            f"network {plan.columns['network_id']} changed since reconciliation saw it: "
            "judged again next pass"
        )
    if ev.kind == "network-stale":
        _network_removed(plan, ev)
    elif plan.newer("oper", ev.key):
        plan.columns["operstate"], plan.keys["oper"] = "ACTIVE", ev.key


def _network_status(plan: Plan, ev: NetworkStatus) -> None:
    state = NETWORK_OPER_ON_SUCCESS.get(ev.opcode) if ev.status == "success" else None
    if ev.opcode == "OP_NETWORK_ADD" and ev.status in FAILED:
        state = "ERROR"
    if state and plan.newer("oper", ev.key):
        plan.columns["operstate"], plan.keys["oper"] = state, ev.key


# ---------------------------------------------------------------- NICs


@dataclass(frozen=True)
class IpRow:
    id: int
    address: str
    floating: bool
    network_id: int
    subnet_id: int


@dataclass(frozen=True)
class NicRow:
    id: int
    network_id: int
    index: int | None
    mac: str | None
    state: str
    created: datetime
    ipv4: tuple[IpRow, ...]  # the NIC's IPv4 addresses (Synnefo gives a NIC at most one)


@dataclass
class NicChanges:
    """Row operations that make a VM's NIC rows match a plan."""

    update: dict[int, dict[str, Any]] = field(default_factory=dict)  # nic id -> columns to set
    remove: list[NicRow] = field(default_factory=list)
    readdress: list[tuple[NicRow, str | None, int]] = field(default_factory=list)  # nic, new IPv4, network
    unknown: list[str] = field(default_factory=list)  # Ganeti NICs Synnefo has no row for (logged)

    def __bool__(self) -> bool:
        return bool(self.update or self.remove or self.readdress)


def nic_changes(plan: NicsPlan, rows: Iterable[NicRow]) -> NicChanges:
    """Synnefo's NIC rules (logic/backend.py update_vm_nics), matched by id, never by position."""
    rows = sorted(rows, key=lambda r: r.id)
    out = NicChanges()
    if plan.kind == "remove":
        out.remove = rows
        return out
    if plan.kind == "error":
        out.update = {r.id: {"state": "ERROR"} for r in rows if r.state != "ERROR"}
        return out
    by_id = {r.id: r for r in rows}
    seen = set()
    for nic in plan.nics:
        row = by_id.get(nic.nic_id) if nic.nic_id is not None else None
        if row is None or nic.network_id is None:
            why = "no such NIC row" if nic.network_id is not None else "its network is not Synnefo's"
            out.unknown.append(f"NIC {nic.index} ({nic.name or 'unnamed'}): {why}")
            if row is not None:
                seen.add(row.id)
            continue
        seen.add(row.id)
        want = {"index": nic.index, "mac": nic.mac, "network_id": nic.network_id, "state": "ACTIVE"}
        have = {"index": row.index, "mac": row.mac, "network_id": row.network_id, "state": row.state}
        changed = {k: v for k, v in want.items() if have[k] != v}
        if changed:
            out.update[row.id] = changed
        current = row.ipv4[0].address if row.ipv4 else None
        if current != nic.ipv4 or (row.ipv4 and row.ipv4[0].network_id != nic.network_id):
            out.readdress.append((row, nic.ipv4, nic.network_id))
    for row in rows:
        if row.id in seen:
            continue
        if row.state == "BUILD" and row.created > plan.time - BUILDING_NIC_GRACE:
            continue  # still being attached: Ganeti will list it once the job that adds it runs
        out.remove.append(row)
    return out
