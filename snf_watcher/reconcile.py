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

from snf_watcher import apply, ippool
from snf_watcher.config import RECONCILE_KINDS, WatcherConfig
from snf_watcher.events import NETWORK_PREFIX, GanetiNic, id_from_name
from snf_watcher.snapshot import ENDED, IN_FLIGHT, Ganeti, Instance, Network
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
NETWORK_KINDS = ("network-stale", "network-missing", "network-orphan", "network-groups", "network-unsynced")
SAFE = frozenset(WatcherConfig.reconcile_fix)  # fixed by cron unless configured otherwise
SUBJECT = {**{kind: "network" for kind in NETWORK_KINDS}, "pool": "pool"}  # any other kind: "vm"
WARNING, CRITICAL = 1, 2
DESTRUCTIVE = frozenset({"stale", "orphan", "network-orphan"})
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
class Subnet:
    version: int  # 4 or 6
    cidr: str
    gateway: str | None
    dhcp: bool


@dataclass(frozen=True)
class BackendNetworkRow:
    """A network's db_backendnetwork row for this backend."""

    id: int
    operstate: str
    deleted: bool
    job_id: int | None
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class NetworkRow:
    """A db_network row, with what this backend's Ganeti needs to hold it."""

    id: int
    deleted: bool
    action: str | None
    public: bool
    mode: str | None
    link: str | None
    tags: tuple[str, ...]
    mac_prefix: str  # this backend's: the network's prefix and the backend's index
    subnets: tuple[Subnet, ...] = ()
    backend: BackendNetworkRow | None = None

    @property
    def wanted(self) -> bool:
        return not self.deleted and self.action != "DESTROY"


@dataclass(frozen=True)
class PoolRows:
    """An IPv4 pool as the database has it, the addresses rows hold in it, and its network."""

    pool: ippool.Pool
    network_id: int
    used: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """One difference: what Ganeti says, what the database says, what fixing it does."""

    kind: str  # one of KINDS
    id: int  # the VM's, the network's or the pool's (SUBJECT[kind] says which)
    name: str  # Ganeti's name for it (the name it would have, for a stale row)
    ganeti: str
    database: str
    fix: str
    updated: datetime | None = None  # the row's `updated` when seen: the fix applies only if unchanged
    # What the correction carries: the operstate, (vcpus, maxmem, disk MiB), Ganeti's NICs, the job id.
    operstate: str | None = None
    flavor: tuple[int | None, int | None, int | None] | None = None
    nics: tuple[GanetiNic, ...] | None = None
    job_id: int | None = None
    # Networks: the row, and the node groups to connect (or disconnect, for an orphan).
    network: NetworkRow | None = None
    groups: tuple[str, ...] = ()
    # Pools: the pool as seen (the fix applies only if it is unchanged), and what Ganeti reserves.
    pool: ippool.Pool | None = None
    reserved: tuple[str, ...] = ()
    blocked: str | None = None  # why no fix can be made now (it is reported, not tried)

    @property
    def destructive(self) -> bool:
        return self.kind in DESTRUCTIVE

    @property
    def key(self) -> str:
        """Names the same finding across passes (the two-pass rule, the retry budget)."""
        return f"{self.kind}:{self.id}"

    @property
    def subject(self) -> str:
        return subject_of(self.key)


def subject_of(key: str) -> str:
    """The subject a finding record's key is about ("vm:101", "network:3", "pool:1")."""
    kind, _, ident = key.rpartition(":")
    return f"{SUBJECT.get(kind, 'vm')}:{ident}"


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
            f"{inst.vcpus} vCPUs, {inst.maxmem} MiB, " + ("no disk" if disk is None else f"disk {disk} MiB"),
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
    gnt = ", ".join(f"{n.name or n.index} {n.mac or '-'} {n.ipv4 or '-'}" for n in inst.nics) or "none"
    db = ", ".join(
        f"{n.id} {n.mac or '-'} {n.ipv4[0].address if n.ipv4 else '-'} {n.state}" for n in row.nics
    )
    return [
        Finding(
            "nics", vm_id, name, gnt, db or "none", "make the NIC rows match", row.updated, nics=inst.nics
        )
    ]


# ---------------------------------------------------------------- networks and pools


def networks_to_read(ganeti: Ganeti) -> set[int]:
    """Ids of the Synnefo networks Ganeti has: their rows are read even without a backend row."""
    return set(_synnefo_networks(ganeti))


def _synnefo_networks(ganeti: Ganeti) -> dict[int, Network]:
    """Ganeti's networks named snf-net-<id>, by id; the others are not Synnefo's."""
    named = ((id_from_name(n.name, NETWORK_PREFIX), n) for n in ganeti.networks)
    return {net_id: n for net_id, n in named if net_id is not None}


def network_diff(
    ganeti: Ganeti, rows: Mapping[int, NetworkRow], jobs: Mapping[int, str], now: datetime
) -> list[Finding]:
    """Findings about this backend's networks (every one of them: they are few), by network id.

    *rows*: the networks with a db_backendnetwork row here, and those Ganeti has.
    A network with a job in flight (Ganeti's, or the one its row waits for)
    is not judged, nor one whose row is younger than BUILD_GRACE (Synnefo
    writes the row before it submits the job that creates the network).
    """
    gnets = _synnefo_networks(ganeti)
    out: list[Finding] = []
    for net_id in sorted(set(rows) | set(gnets)):
        row, gnet = rows.get(net_id), gnets.get(net_id)
        name = f"{NETWORK_PREFIX}{net_id}"
        bn = row.backend if row is not None else None
        if name in ganeti.busy_networks or (bn is not None and _job_live(bn.job_id, jobs)):
            continue
        if gnet is None:
            out += _network_gone(net_id, name, row, ganeti.groups, now)
        elif row is None or row.deleted:
            out.append(_network_orphan(net_id, gnet, row))
        elif row.wanted:
            out += _network_present(net_id, gnet, row, ganeti.groups)
    return out


def _alive(bn: BackendNetworkRow | None) -> bool:
    return bn is not None and not bn.deleted and bn.operstate != "DELETED"


def _network_gone(
    net_id: int, name: str, row: NetworkRow | None, groups: tuple[str, ...], now: datetime
) -> list[Finding]:
    """Ganeti has no such network: a row that says it has one is stale, or the network is missing."""
    if row is None or row.backend is None or not _alive(row.backend):
        return []
    bn = row.backend
    seen = f"backend network {bn.id} {bn.operstate}"
    if not row.wanted:
        fix = "mark the backend network DELETED"
        return [Finding("network-stale", net_id, name, "no network", seen, fix, bn.updated, network=row)]
    if bn.job_id is None and now - bn.created < BUILD_GRACE:
        return []  # Synnefo is about to submit the job that creates it
    fix = "create it in Ganeti and connect it to every node group"
    return [
        Finding(
            "network-missing",
            net_id,
            name,
            "no network",
            seen,
            fix,
            bn.updated,
            network=row,
            groups=groups,
            blocked=_unconnectable(row),
        )
    ]


def _unconnectable(row: NetworkRow) -> str | None:
    """Why Ganeti could not connect this network to a node group, if it could not."""
    return None if row.mode and row.link else f"network {row.id} has no mode or link to connect it with"


def conflicts_check(row: NetworkRow) -> bool:
    """Synnefo has Ganeti check address conflicts only for public networks with IPv4."""
    return row.public and any(s.version == 4 for s in row.subnets)


def _network_orphan(net_id: int, gnet: Network, row: NetworkRow | None) -> Finding:
    seen = "no network row" if row is None else "network deleted"
    ganeti = f"network {gnet.cidr or '-'}, groups {', '.join(gnet.groups) or 'none'}"
    blocked = None
    if gnet.instances:
        blocked = f"{len(gnet.instances)} instances still have a NIC on it: {', '.join(gnet.instances[:5])}"
    fix = "disconnect it from its node groups and remove it through RAPI"
    return Finding(
        "network-orphan",
        net_id,
        gnet.name,
        ganeti,
        seen,
        fix,
        network=row,
        groups=gnet.groups,
        blocked=blocked,
    )


def _network_present(net_id: int, gnet: Network, row: NetworkRow, groups: tuple[str, ...]) -> list[Finding]:
    missing = tuple(g for g in groups if g not in gnet.groups)
    bn = row.backend
    if missing:
        return [
            Finding(
                "network-groups",
                net_id,
                gnet.name,
                f"connected to {', '.join(gnet.groups) or 'no node group'}",
                f"{row.mode or '-'} {row.link or '-'} on every node group",
                f"connect it to {', '.join(missing)}",
                network=row,
                groups=missing,
                blocked=_unconnectable(row),
            )
        ]
    if bn is not None and not bn.deleted and bn.operstate == "ACTIVE":
        return []
    seen = "no backend network row" if bn is None else f"backend network {bn.id} {bn.operstate}"
    fix = "mark the backend network ACTIVE" if bn is None or not bn.deleted else "none: the row is deleted"
    return [
        Finding(
            "network-unsynced",
            net_id,
            gnet.name,
            "connected to every node group",
            seen,
            fix,
            bn.updated if bn is not None else None,
            network=row,
            blocked="its backend network row is deleted" if bn is not None and bn.deleted else None,
        )
    ]


def create_network_body(name: str, row: NetworkRow) -> dict[str, object]:
    """What Synnefo asks Ganeti for when it creates a network on a backend (OP_NETWORK_ADD).

    Ganeti needs an IPv4 range even for an IPv6-only network: Synnefo gives it
    a dummy one, and never hands its addresses out.
    """
    v4 = next((s for s in row.subnets if s.version == 4), None)
    v6 = next((s for s in row.subnets if s.version == 6), None)
    tags = [*row.tags]
    if any(s.dhcp for s in row.subnets) and "nfdhcpd" not in tags:
        tags.append("nfdhcpd")
    tags.append("public" if row.public else "private")
    body: dict[str, object] = {
        "network_name": name,
        "network": v4.cidr if v4 else "10.0.0.0/29",
        "mac_prefix": row.mac_prefix,
        "conflicts_check": conflicts_check(row),
        "tags": tags,
    }
    for key, value in (
        ("gateway", v4.gateway if v4 else None),
        ("network6", v6.cidr if v6 else None),
        ("gateway6", v6.gateway if v6 else None),
    ):
        if value:
            body[key] = value
    return body


def pool_diff(ganeti: Ganeti, pools: Iterable[PoolRows]) -> list[Finding]:
    """Findings about IPv4 pools whose maps disagree with the addresses in use, by pool id.

    Ganeti's external reservations of the pool's network (its gateway, the
    addresses an admin reserved) must not be handed out either. An unusable
    pool (never initialised, maps too short) is reported and not touched.
    """
    reserved = {net_id: n.reserved for net_id, n in _synnefo_networks(ganeti).items()}
    out = []
    for p in sorted(pools, key=lambda p: p.pool.id):
        pool, kept = p.pool, reserved.get(p.network_id, ())
        name = f"pool {pool.id} ({pool.base}, network {p.network_id})"
        try:
            d = ippool.drift(pool, p.used, kept)
        except ippool.PoolError as e:
            out.append(Finding("pool", pool.id, name, "-", str(e), "none", pool=pool, blocked=str(e)))
            continue
        if not d:
            continue
        parts = [
            (d.used_but_free, "in use but free"),
            (d.taken_unused, "taken but unused"),
            (d.reserved_free, "reserved in Ganeti but free"),
            (d.duplicates, "held by several addresses"),
        ]
        database = "; ".join(f"{len(a)} {what}: {_few(a)}" for a, what in parts if a)
        ganeti_says = f"reserves {_few(kept)}" if kept else "no external reservations"
        fix = "rebuild the pool's maps from the addresses in use"
        blocked = None
        if d.duplicates and not (d.used_but_free or d.taken_unused or d.reserved_free):
            blocked = "an address held twice needs a person to decide which NIC keeps it"
        out.append(
            Finding(
                "pool", pool.id, name, ganeti_says, database, fix, pool=pool, reserved=kept, blocked=blocked
            )
        )
    return out


def _few(addresses: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(addresses) - shown} more" if len(addresses) > shown else ""
    return ", ".join(addresses[:shown]) + more


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
    found: list[Finding], records: Mapping[str, Record], checked: set[str], opts: Options, now: float
) -> tuple[list[Outcome], dict[str, Record]]:
    """What to do about each finding, and the finding records after this pass.

    A destructive fix needs the finding on two consecutive passes (its record
    from the last one), and at most `max_destructive` run per pass. A fix
    that does not stick is tried `max_tries` times within `retry_expiration`,
    then given up (CRITICAL). Records of subjects checked this pass ("vm:101",
    "network:3", "pool:1") without the finding are dropped: fixed, or gone by
    themselves. A blocked finding is reported and costs no attempt.
    """
    out: list[Outcome] = []
    kept = {
        k: r
        for k, r in records.items()
        if subject_of(k) not in checked and not r.expired(now, opts.retry_expiration)
    }
    destructive = 0
    for f in found:
        rec = records.get(f.key)
        if rec is not None and rec.expired(now, opts.retry_expiration):
            rec = None
        seen_before = rec is not None
        vm_id = f.id if f.subject.startswith("vm:") else None
        rec = rec or Record(f.name, vm_id, first_failure=now)
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
    if f.blocked is not None:
        return "report", f"cannot be fixed now: {f.blocked}"
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
