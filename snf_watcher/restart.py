"""The restart policy: which crashed instances to start again, and why (pure).

Ganeti's own watcher is the model: it restarts `ERROR_down` instances, leaves
those on a dead node alone, gives each instance MAXTRIES attempts, forgets a
record RETRY_EXPIRATION after its last attempt and as soon as the instance
runs. It also restarts guests their owners shut down and acts on instances
in the middle of another job. Here an instance is restarted only when
Synnefo's row says its owner wants it running (STARTED, not deleted, no task
pending) and no Ganeti job is in flight for it or its node; at most
`max_restarts` per pass, oldest failure first.

`decide` is a function of (snapshots, state, policy, now): every verdict it
returns says what was seen and which rule fired, for the log, the report and
the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from snf_watcher.events import id_from_name
from snf_watcher.snapshot import ENDED, Ganeti, Instance, Vm
from snf_watcher.state import Record, State

BAD = "ERROR_down"
HELPLESS = frozenset({"ERROR_nodedown", "ERROR_nodeoffline"})

OK, WARNING, CRITICAL = 0, 1, 2


@dataclass(frozen=True)
class Policy:
    max_tries: int = 5
    retry_expiration: float = 8 * 3600.0
    max_restarts: int = 10
    prefix: str = "snf-"


@dataclass(frozen=True)
class Verdict:
    """One instance as the pass saw it: the rule that fired and what is done about it."""

    instance: str
    uuid: str
    vm_id: int | None
    status: str  # Ganeti's run status
    rule: str  # short name of the rule, stable for scripts (see RULES)
    severity: int  # OK, WARNING or CRITICAL
    text: str  # the explanation a person reads
    restart: bool = False  # a startup job is to be submitted
    charged: bool = True  # the restart counts against the budget


# rule -> what it means; the README's table and `--json` users rely on these names.
RULES = {
    "restart": "ERROR_down and its owner wants it running: a startup job is submitted",
    "restart-after-reboot": "ERROR_down after its node rebooted: restarted, not charged to the budget",
    "recovered": "running again: its record is dropped",
    "giving-up": "its last allowed attempt failed: a diagnostic is written, no more tries",
    "gave-up": "MAXTRIES attempts failed earlier: no more tries until the record expires or is reset",
    "deferred": "more crashed instances than restarts allowed per pass: tried on a later pass",
    "helpless": "its node is down or offline: nothing to do here, nothing charged",
    "user-down": "the guest shut itself down: never restarted",
    "owner-stopped": "Synnefo's row does not say STARTED: the owner does not want it running",
    "deleted": "deleted in Synnefo: never restarted",
    "task-pending": "Synnefo has an action pending on it: left to that action",
    "job-in-flight": "a Ganeti job acts on it or its node: left to that job",
    "not-synnefo": "no Synnefo VM row on this backend for it: left to Ganeti's own watcher",
}


@dataclass(frozen=True)
class Decision:
    verdicts: tuple[Verdict, ...]  # instances worth a line, by name; restarts in submission order
    state: State  # after the pass, restarts counted; their job ids are filled in by the caller
    rebooted: tuple[str, ...]  # nodes whose boot id changed since the last pass

    @property
    def restarts(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.restart]

    @property
    def gave_up_now(self) -> list[Verdict]:
        """Instances whose budget ran out in this very pass (one diagnostic each)."""
        return [v for v in self.verdicts if v.rule == "giving-up"]


def decide(ganeti: Ganeti, vms: Mapping[int, Vm], state: State, policy: Policy, now: float) -> Decision:
    """Which instances to restart, and what became of every record."""
    rebooted = tuple(
        sorted(
            n.name
            for n in ganeti.nodes.values()
            if n.bootid and state.nodes.get(n.name) not in (None, n.bootid)
        )
    )
    rebooted_set = frozenset(rebooted)
    records = _live_records(ganeti, state, policy, now)
    verdicts: list[Verdict] = []
    candidates: list[tuple[float, Instance, Verdict]] = []
    for inst in sorted(ganeti.instances, key=lambda i: i.name):
        record = records.get(inst.uuid)
        if record is not None and record.name != inst.name:
            records[inst.uuid] = record = replace(record, name=inst.name)
        verdict = _judge(inst, record, ganeti, vms, policy, now, inst.pnode in rebooted_set)
        if verdict is None:
            continue
        if verdict.rule == "recovered":
            del records[inst.uuid]
        elif verdict.rule == "giving-up":
            records[inst.uuid] = replace(record or Record(inst.name, verdict.vm_id), gave_up=now)
        if verdict.restart:
            first = record.first_failure if record and record.first_failure is not None else now
            candidates.append((first, inst, verdict))
        else:
            verdicts.append(verdict)
    candidates.sort(key=lambda c: (c[0], c[1].name))
    for n, (first, inst, verdict) in enumerate(candidates):
        record = records.get(inst.uuid) or Record(name=inst.name, vm_id=verdict.vm_id)
        if n < policy.max_restarts:
            records[inst.uuid] = replace(
                record,
                attempts=record.attempts + (1 if verdict.charged else 0),
                first_failure=first,
                last_attempt=now,
                last_job=None,
                last_job_status=None,
            )
            verdicts.insert(n, verdict)
        else:
            records[inst.uuid] = replace(record, first_failure=first)
            verdicts.append(
                replace(
                    verdict,
                    rule="deferred",
                    severity=WARNING,
                    restart=False,
                    text=f"{verdict.text}; deferred: {policy.max_restarts} restarts per pass at most, "
                    "older failures first",
                )
            )
    nodes = {n.name: n.bootid for n in ganeti.nodes.values() if n.bootid}
    return Decision(tuple(verdicts), replace(state, instances=records, nodes=nodes), rebooted)


def _live_records(ganeti: Ganeti, state: State, policy: Policy, now: float) -> dict[str, Record]:
    """Records of instances Ganeti still has, not expired, their last job's outcome filled in."""
    present = {i.uuid for i in ganeti.instances}
    out = {}
    for uuid, record in state.instances.items():
        if uuid not in present or record.expired(now, policy.retry_expiration):
            continue
        if record.last_job is not None and record.last_job_status not in ENDED:
            status = ganeti.jobs.get(record.last_job, record.last_job_status)
            record = replace(record, last_job_status=status)
        out[uuid] = record
    return out


def _judge(
    inst: Instance,
    record: Record | None,
    ganeti: Ganeti,
    vms: Mapping[int, Vm],
    policy: Policy,
    now: float,
    node_rebooted: bool,
) -> Verdict | None:
    """The rule for one instance; None when there is nothing to say about it."""
    if inst.status == "running" and record is None:
        return None  # nearly every instance: decided before any other work
    vm_id = id_from_name(inst.name, policy.prefix)

    def verdict(rule: str, severity: int, text: str, **kw: bool) -> Verdict:
        return Verdict(inst.name, inst.uuid, vm_id, inst.status, rule, severity, text, **kw)

    if inst.status == "running":
        return verdict("recovered", OK, f"running again{_last_job(record)}")
    if inst.status in HELPLESS:
        return verdict("helpless", WARNING, f"{inst.status}: node {inst.pnode} cannot run it; not charged")
    if inst.status == "USER_down":
        return verdict("user-down", OK, "USER_down: the guest shut itself down; not restarted")
    if inst.status != BAD:
        return None
    vm = vms.get(vm_id) if vm_id is not None else None
    if vm is None:
        return verdict("not-synnefo", OK, "ERROR_down, but no Synnefo VM row on this backend names it")
    if vm.deleted:
        return verdict("deleted", OK, f"ERROR_down; VM {vm.id} is deleted in Synnefo")
    if vm.operstate != "STARTED":
        return verdict("owner-stopped", OK, f"ERROR_down; VM {vm.id} is {vm.operstate} in Synnefo")
    if vm.task:
        job = f" (job {vm.task_job_id})" if vm.task_job_id is not None else ""
        return verdict("task-pending", OK, f"ERROR_down; Synnefo task {vm.task}{job} pending")
    job_id = ganeti.busy_instances.get(inst.name)
    if job_id is None:
        job_id = ganeti.busy_nodes.get(inst.pnode)
    if job_id is not None:
        return verdict("job-in-flight", OK, f"ERROR_down; Ganeti job {job_id} in flight for it")
    if node_rebooted:
        return verdict(
            "restart-after-reboot",
            OK,
            f"ERROR_down after node {inst.pnode} rebooted: restart, not charged",
            restart=True,
            charged=False,
        )
    attempts = record.attempts if record else 0
    if record and record.gave_up is not None:
        until = (record.last_attempt or record.gave_up) + policy.retry_expiration
        return verdict(
            "gave-up",
            CRITICAL,
            f"ERROR_down; gave up after {attempts} attempts{_last_job(record)}; "
            f"next try after {utc(until)} or `snf-watcher reset {inst.name}`",
        )
    if attempts >= policy.max_tries:
        return verdict(
            "giving-up",
            CRITICAL,
            f"ERROR_down; giving up after {attempts} attempts{_last_job(record)}",
        )
    failed_before = record is not None and record.last_job_status in ("error", "canceled", "gone")
    return verdict(
        "restart",
        WARNING if failed_before else OK,
        f"ERROR_down, VM {vm.id} STARTED in Synnefo: restart, attempt {attempts + 1} of "
        f"{policy.max_tries}{_last_job(record)}",
        restart=True,
    )


def _last_job(record: Record | None) -> str:
    if record is None or record.last_job is None:
        return ""
    return f" (last startup job {record.last_job}: {record.last_job_status or 'not checked yet'})"


def utc(epoch: float) -> str:
    """A time as people and logs show it, in UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def reset(state: State, instance: str) -> tuple[State, Record | None]:
    """Forget one instance's record (by name or UUID), so it gets a fresh budget."""
    for uuid, record in state.instances.items():
        if instance in (uuid, record.name):
            rest = {k: v for k, v in state.instances.items() if k != uuid}
            return replace(state, instances=rest), record
    return state, None


def severity(verdicts: list[Verdict] | tuple[Verdict, ...]) -> int:
    return max((v.severity for v in verdicts), default=OK)
