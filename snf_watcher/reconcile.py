"""Reconciliation: every difference between Synnefo's rows and what Ganeti has (pure).

Synnefo's `snf-manage reconcile-servers` is the model for what to look at;
its history is the list of what not to do. Here:

- a VM with a Ganeti job in flight (for it or its node) is never judged:
  the job will tell the truth when it ends;
- a BUILD or ERROR row without an instance is not "stale" (a create that has
  not reached Ganeti yet, or failed), unless the owner asked to destroy it;
- an instance that Ganeti wants up but finds down (ERROR_*) is the restart
  policy's business, not an operstate drift;
- a BUILD row is "stuck" only when its create job is known to have ended or
  to be gone, looked up by id (archived jobs included), never because it is
  missing from the live job list;
- NICs are compared with the very rules delivery applies (apply.nic_changes).

`diff` returns findings; fixing them is the caller's, as synthetic messages
through the outbox so that corrections and events obey the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from snf_watcher import apply
from snf_watcher.config import RECONCILE_KINDS
from snf_watcher.events import GanetiNic, id_from_name
from snf_watcher.snapshot import ENDED, IN_FLIGHT, Ganeti, Instance
from snf_watcher.state import Record

# Ganeti's run status -> the operstate Synnefo shows; statuses not here (ERROR_*) say nothing
# about what the owner wants and are left to the restart policy.
OPERSTATE = {
    "running": "STARTED",
    "ADMIN_down": "STOPPED",
    "USER_down": "STOPPED",
    "ADMIN_offline": "STOPPED",
}
KINDS = RECONCILE_KINDS
SAFE = frozenset(
    {"operstate", "flavor", "nics", "build", "task"}
)  # fixed by cron unless configured otherwise
WARNING, CRITICAL = 1, 2
DESTRUCTIVE = frozenset({"stale", "orphan"})
# A BUILD row whose create job Synnefo has not submitted yet (backendjobid NULL) is young,
# not stuck, for this long.
BUILD_GRACE = timedelta(minutes=10)


@dataclass(frozen=True)
class Row:
    """A db_virtualmachine row, as reconciliation compares it."""

    id: int
    operstate: str
    deleted: bool
    action: str | None
    flavor: apply.Flavor | None
    task: str | None
    task_job_id: int | None
    backendjobid: int | None
    created: datetime
    updated: datetime
    nics: tuple[apply.NicRow, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One difference: what Ganeti says, what the database says, what fixing it does."""

    kind: str  # one of KINDS
    vm_id: int
    instance: str  # Ganeti's name for it (the name it would have, for a stale row)
    ganeti: str
    database: str
    fix: str
    updated: datetime | None = None  # the row's `updated` when seen: the fix applies only if unchanged
    # What the correction carries: the operstate, (vcpus, maxmem, disk MiB), Ganeti's NICs, the job id.
    operstate: str | None = None
    flavor: tuple[int | None, int | None, int | None] | None = None
    nics: tuple[GanetiNic, ...] | None = None
    job_id: int | None = None

    @property
    def destructive(self) -> bool:
        return self.kind in DESTRUCTIVE

    @property
    def key(self) -> str:
        """Names the same finding across passes (the two-pass rule, the retry budget)."""
        return f"{self.kind}:{self.vm_id}"


def jobs_to_look_up(ganeti: Ganeti, rows: Iterable[Row]) -> set[int]:
    """Job ids the diff needs and the live list lacks: ask RAPI for each (archived ones too)."""
    wanted = set()
    for row in rows:
        if row.deleted:
            continue
        if row.operstate == "BUILD" and row.backendjobid:
            wanted.add(row.backendjobid)
        if row.task_job_id:
            wanted.add(row.task_job_id)
    return {j for j in wanted if j not in ganeti.jobs}


def diff(
    ganeti: Ganeti,
    rows: Mapping[int, Row],
    jobs: Mapping[int, str],
    prefix: str,
    now: datetime,
    window: Iterable[int] | None = None,
) -> list[Finding]:
    """Findings for the VM ids in *window* (None: all), by VM id then kind.

    *jobs* maps job ids to their status, "gone" for an id Ganeti does not
    know; the live job list plus `jobs_to_look_up`'s answers.
    """
    instances: dict[int, Instance] = {}
    for inst in ganeti.instances:
        vm_id = id_from_name(inst.name, prefix)
        if vm_id is not None:
            instances[vm_id] = inst
    ids = set(rows) | set(instances) if window is None else set(window)
    out: list[Finding] = []
    for vm_id in sorted(ids):
        row, inst = rows.get(vm_id), instances.get(vm_id)
        name = inst.name if inst else f"{prefix}{vm_id}"
        if inst is not None and _busy(ganeti, inst):
            continue
        if row is not None and not row.deleted and _job_live(row.task_job_id, jobs):
            continue
        out += _server(vm_id, name, row, inst, jobs, now)
    return out


def _busy(ganeti: Ganeti, inst: Instance) -> bool:
    return inst.name in ganeti.busy_instances or inst.pnode in ganeti.busy_nodes


def _job_live(job_id: int | None, jobs: Mapping[int, str]) -> bool:
    return job_id is not None and jobs.get(job_id) in IN_FLIGHT


def _server(
    vm_id: int, name: str, row: Row | None, inst: Instance | None, jobs: Mapping[int, str], now: datetime
) -> list[Finding]:
    if row is None or row.deleted:
        if inst is None:
            return []
        seen = "no row" if row is None else "deleted"
        return [Finding("orphan", vm_id, name, inst.status, seen, "remove the instance through RAPI")]
    if inst is None:
        return _missing(vm_id, name, row, jobs, now)
    found = []
    if row.operstate == "BUILD":
        found += _stuck(vm_id, name, row, inst, jobs, now)
    else:
        want = OPERSTATE.get(inst.status)
        if want is not None and want != row.operstate:
            fix = f"set operstate {want}"
            found.append(
                Finding("operstate", vm_id, name, inst.status, row.operstate, fix, row.updated, want)
            )
    found += _flavor(vm_id, name, row, inst)
    found += _nics(vm_id, name, row, inst, now)
    if row.task and row.task_job_id is not None and jobs.get(row.task_job_id) in ENDED:
        status = jobs[row.task_job_id]
        found.append(
            Finding(
                "task",
                vm_id,
                name,
                f"job {row.task_job_id} {status}",
                f"task {row.task} (job {row.task_job_id})",
                "clear the task",
                row.updated,
                job_id=row.task_job_id,
            )
        )
    return found


def _missing(vm_id: int, name: str, row: Row, jobs: Mapping[int, str], now: datetime) -> list[Finding]:
    """A row without an instance: stale, unless it is being built or failed to be."""
    if row.operstate == "BUILD":
        return _stuck(vm_id, name, row, None, jobs, now)
    if row.operstate == "ERROR" and row.action != "DESTROY":
        return []  # a failed create: Synnefo shows it to its owner as ERROR, who may delete it
    if row.operstate == "DESTROYED":
        return []
    return [Finding("stale", vm_id, name, "no instance", row.operstate, "mark the VM DESTROYED", row.updated)]


def _stuck(
    vm_id: int, name: str, row: Row, inst: Instance | None, jobs: Mapping[int, str], now: datetime
) -> list[Finding]:
    """A BUILD row whose create job has ended or vanished: the state Ganeti's answer implies."""
    job = row.backendjobid
    if not job:
        if now - row.created < BUILD_GRACE or inst is not None:
            return []
        status = "never submitted"
    else:
        status = jobs.get(job, "unknown")
        if status not in ENDED:
            return []
    want = OPERSTATE.get(inst.status) if inst is not None and status == "success" else None
    if inst is not None and want is None and status == "success":
        return []  # created, now ERROR_*: the restart policy's, not ours
    want = want or "ERROR"
    seen = f"create job {job} {status}" + (f", instance {inst.status}" if inst else ", no instance")
    return [
        Finding("build", vm_id, name, seen, "BUILD", f"set operstate {want}", row.updated, want, job_id=job)
    ]


def _flavor(vm_id: int, name: str, row: Row, inst: Instance) -> list[Finding]:
    f = row.flavor
    if f is None or inst.vcpus is None or inst.maxmem is None:
        return []
    disk = inst.disk_sizes[0] if inst.disk_sizes else None
    have = (inst.vcpus, inst.maxmem, disk)
    if have == (f.cpu, f.ram, f.disk * 1024) or (disk is None and have[:2] == (f.cpu, f.ram)):
        return []
    return [
        Finding(
            "flavor",
            vm_id,
            name,
            f"{inst.vcpus} vCPUs, {inst.maxmem} MiB, disk {disk} MiB",
            f"flavor {f.id}: {f.cpu} vCPUs, {f.ram} MiB, disk {f.disk} GiB",
            "move to the flavor that matches",
            row.updated,
            flavor=have,
        )
    ]


def _nics(vm_id: int, name: str, row: Row, inst: Instance, now: datetime) -> list[Finding]:
    changes = apply.nic_changes(apply.NicsPlan("match", now, inst.nics), row.nics)
    if not changes and not changes.unknown:  # a NIC without a row is drift too, though no fix makes one
        return []
    gnt = ", ".join(f"{n.name or n.index} {n.mac} {n.ipv4 or '-'}" for n in inst.nics) or "none"
    db = ", ".join(f"{n.id} {n.mac} {n.ipv4[0].address if n.ipv4 else '-'} {n.state}" for n in row.nics)
    return [
        Finding(
            "nics", vm_id, name, gnt, db or "none", "make the NIC rows match", row.updated, nics=inst.nics
        )
    ]


# ---------------------------------------------------------------- what to do about them


@dataclass(frozen=True)
class Options:
    fix: frozenset[str]  # the kinds to fix; the others are reported
    max_tries: int = 5  # fixes of one finding before giving up on it
    retry_expiration: float = 8 * 3600.0
    max_destructive: int = 5  # destructive fixes per pass at most


@dataclass(frozen=True)
class Outcome:
    """A finding and what the pass does about it."""

    finding: Finding
    action: str  # fix, report, confirm (destructive: wait for a second sighting), capped, giving-up, gave-up
    severity: int  # 1 WARNING (drift), 2 CRITICAL (given up)
    text: str


def decide(
    found: list[Finding], records: Mapping[str, Record], checked: set[int], opts: Options, now: float
) -> tuple[list[Outcome], dict[str, Record]]:
    """What to do about each finding, and the finding records after this pass.

    A destructive fix needs the finding on two consecutive passes (its record
    from the last one), and at most `max_destructive` run per pass. A fix
    that does not stick is tried `max_tries` times within `retry_expiration`,
    then given up (CRITICAL). Records of VMs checked this pass without the
    finding are dropped: fixed, or gone by themselves.
    """
    out: list[Outcome] = []
    kept = {
        k: r
        for k, r in records.items()
        if r.vm_id not in checked and not r.expired(now, opts.retry_expiration)
    }
    destructive = 0
    for f in found:
        rec = records.get(f.key)
        if rec is not None and rec.expired(now, opts.retry_expiration):
            rec = None
        seen_before = rec is not None
        rec = rec or Record(f.instance, f.vm_id, first_failure=now)
        action, text = _action(f, rec, seen_before, opts, destructive)
        if action == "fix":
            destructive += f.destructive
            rec = replace(rec, attempts=rec.attempts + 1, last_attempt=now)
        elif action == "giving-up":
            rec = replace(rec, gave_up=now)
        kept[f.key] = rec
        out.append(Outcome(f, action, CRITICAL if action in ("giving-up", "gave-up") else WARNING, text))
    return out, kept


def _action(f: Finding, rec: Record, seen_before: bool, opts: Options, destructive: int) -> tuple[str, str]:
    if rec.gave_up is not None:
        return "gave-up", f"gave up after {rec.attempts} fixes that did not stick"
    if f.kind not in opts.fix:
        return "report", f"not fixed (--fix-{f.kind} would {f.fix})"
    if rec.attempts >= opts.max_tries:
        return "giving-up", f"giving up: {rec.attempts} fixes did not stick"
    if f.destructive and not seen_before:
        return "confirm", f"seen once: will {f.fix} if the next pass sees it too"
    if f.destructive and destructive >= opts.max_destructive:
        return "capped", f"{opts.max_destructive} destructive fixes per pass at most: next pass"
    return "fix", f"{f.fix} (fix {rec.attempts + 1} of {opts.max_tries})"


def window(ids: Iterable[int], cursor: int, size: int) -> tuple[list[int], int]:
    """The next *size* VM ids after *cursor*, wrapping around: the least recently checked first."""
    ordered = sorted(set(ids))
    if size >= len(ordered):
        return ordered, 0
    after = [i for i in ordered if i > cursor]
    chosen = (after + ordered)[:size]
    return sorted(chosen), chosen[-1]
