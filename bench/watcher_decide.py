#!/usr/bin/env python3
"""Watcher decision step: snapshot + decide for 10,000 and 100,000 instances.

A cron pass of snf-watcher reads three bulk RAPI answers (instances, nodes,
live jobs), builds its Ganeti snapshot from them (`snapshot.ganeti`) and
decides which crashed instances to restart (`restart.decide`). Both are pure,
so they are timed here in-process on synthetic clusters, without a server.

The cluster (per size N, seeded): N instances snf-<id> over N/40 nodes, each
instance dict a copy of a recorded one (tests/fixtures/ganeti-3.0.2/rapi/
instances-bulk.json) with name, uuid, status and pnode changed, so the body
has the real size per instance; statuses ~97% running, 1% ERROR_down, 0.5%
each USER_down, ERROR_nodedown, ADMIN_down, ERROR_up. A Synnefo VM row
(`snapshot.Vm`) for every instance: mostly STARTED, ADMIN_down ones STOPPED,
some ERROR_down ones STOPPED, with a task pending or deleted, a few deleted
elsewhere. The jobs body (built like jobs-bulk-with-running.json, from its
instance jobs) holds ~1% of N jobs in flight (queued/waiting/running), a fifth
of the ERROR_down instances among their targets, as many finished ones, and
half of the last pass's startup jobs. The previous State has records for
about half the ERROR_down instances (some gave up, some out of budget, some
expired, the rest in progress) plus the last pass's PENDING startups (half on
instances running again, half still ERROR_down) whose outcome is not known
yet; node boot ids unchanged. Policy: max_restarts 10, max_tries 5.

Timed, best of --repeat runs (median too), time.perf_counter:
  (a) baseline: `json.loads` of the instances and jobs bodies as bytes, the
      unavoidable cost of reading the snapshot RAPI sends;
  (b) `snapshot.ganeti(instances, nodes, jobs)` on the parsed bodies;
  (c) `restart.decide(ganeti, vms, state, policy, now)`.
The three are timed again with the cyclic GC off: json.loads of large
bodies spends about half its time in full collections over the objects it
has just made (real in a pass, but not the parse's own cost), so the ratio is
given both ways. Peak memory (tracemalloc) while building the snapshot and
deciding, the parsed bodies (held by the baseline too) excluded; the bodies'
size for context.

RAPI calls per pass, without a server: the real `watcher._ganeti(rapi, old)`
runs against a stand-in whose methods return the synthetic bodies and count
calls; +1 for the pass's `version()` call, + one startup per restart.

Correctness: the restarts are the min(max_restarts, eligible) ERROR_down
instances with the oldest first failure, eligibility worked out here from the
synthetic data (VM STARTED, not deleted, no task, no job in flight, no live
record that gave up or is out of budget); every restarted VM is STARTED.

Targets: (b)+(c) for the largest size (100,000) < 2 s, and <= 3x the
baseline with the GC on and with it off; RAPI calls per pass equal for every
size; the restarts as worked out here, for every size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import benchlib

from snf_watcher import restart, snapshot, watcher
from snf_watcher.snapshot import Vm
from snf_watcher.state import Record, State

RAPI = benchlib.FIXTURES / "rapi"
NOW = 1_795_300_000.0
POLICY = restart.Policy(max_tries=5, retry_expiration=8 * 3600.0, max_restarts=10, prefix="snf-")
FIRST_ID = 100_000
PER_NODE = 40
PENDING = 10  # the last pass's startup jobs whose outcome is not known yet (<= max_restarts)
# Shares of the instances' run statuses; the rest are running.
SHARES = (("ERROR_down", 0.01), ("USER_down", 0.005), ("ERROR_nodedown", 0.005), ("ADMIN_down", 0.005))
SHARES += (("ERROR_up", 0.005),)
IN_FLIGHT = ("queued", "waiting", "running")
TARGET_SECONDS = 2.0
TARGET_RATIO = 3.0


def recorded(name: str) -> Any:
    return json.loads((RAPI / name).read_bytes())


# ---------------------------------------------------------------- the synthetic cluster


@dataclass
class Cluster:
    n: int
    instances_body: bytes  # /2/instances?bulk=1 as RAPI sends it
    jobs_body: bytes  # /2/jobs?bulk=1
    nodes_rows: list[dict]  # Rapi.nodes()'s answer (query rows as dicts)
    archived: dict[int, dict | None]  # GET /2/jobs/<id> of the last pass's jobs no longer listed
    vms: dict[int, Vm]
    state: State
    eligible: list[tuple[float, str]]  # (first failure, name) of the instances a restart is due for
    busy: set[str]  # instances a job in flight names
    pending: int  # last pass's startups no longer listed (one GET each)


class JobMaker:
    """Jobs shaped like the recorded ones: a recorded instance job with id, status, instance changed."""

    def __init__(self) -> None:
        recorded_jobs = recorded("jobs-bulk-with-running.json")
        self.templates = {
            j["ops"][0]["OP_ID"]: j
            for j in recorded_jobs
            if len(j["ops"]) == 1 and isinstance(j["ops"][0].get("instance_name"), str)
        }
        self.error = recorded("job-error.json")  # GET /2/jobs/<id> answers (oplog, opresult too)
        self.success = recorded("job-success.json")

    def make(self, template: dict, job_id: int, status: str, name: str, inst_uuid: str) -> dict:
        op = dict(template["ops"][0])
        old_name = op["instance_name"]
        op["instance_name"], op["instance_uuid"] = name, inst_uuid
        op["reason"] = [
            [src, what.replace(f"job={template['id']};", f"job={job_id};"), ts]
            for src, what, ts in op["reason"]
        ]
        job = dict(template, id=job_id, status=status, ops=[op], opstatus=[status])
        job["summary"] = [s.replace(old_name, name) for s in template["summary"]]
        if status in IN_FLIGHT:
            job["end_ts"] = None
            if status == "queued":
                job["start_ts"] = None
        return job

    def startup(self, job_id: int, status: str, name: str, inst_uuid: str) -> dict:
        return self.make(self.templates["OP_INSTANCE_STARTUP"], job_id, status, name, inst_uuid)


def build(n: int, seed: int) -> Cluster:
    rng = random.Random(seed * 1_000_003 + n)
    by_status = {i["status"]: i for i in recorded("instances-bulk.json")}
    by_status.setdefault("USER_down", by_status["ERROR_down"])  # the same fields, another status
    by_status.setdefault("ERROR_nodedown", by_status["ERROR_down"])
    jobs_maker = JobMaker()

    n_nodes = max(1, n // PER_NODE)
    node_names = [f"node{k + 1}.ganeti.test" for k in range(n_nodes)]
    boot_ids = {name: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for name in node_names}
    nodes_rows = [{"name": name, "bootid": boot_ids[name], "offline": False} for name in node_names]

    statuses = [status for status, share in SHARES for _ in range(round(n * share))]
    statuses += ["running"] * (n - len(statuses))
    rng.shuffle(statuses)
    names = [f"snf-{FIRST_ID + k}" for k in range(n)]  # RAPI answers in name order
    uuids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    instances = [
        dict(by_status[status], name=name, uuid=u, status=status, pnode=node_names[rng.randrange(n_nodes)])
        for name, u, status in zip(names, uuids, statuses, strict=True)
    ]

    # Synnefo's rows: what each owner wants.
    vms: dict[int, Vm] = {}
    for k, status in enumerate(statuses):
        vm_id, r = FIRST_ID + k, rng.random()
        if status == "ERROR_down":
            if r < 0.70:
                vm = Vm(vm_id, "STARTED", False)
            elif r < 0.82:
                vm = Vm(vm_id, "STOPPED", False)
            elif r < 0.92:
                vm = Vm(vm_id, "STARTED", False, "START", 90_000 + k)
            else:
                vm = Vm(vm_id, "DESTROYED", True)
        elif status == "ADMIN_down":
            vm = Vm(vm_id, "STOPPED", False)
        elif r < 0.001:
            vm = Vm(vm_id, "DESTROYED", True)
        elif r < 0.006:
            vm = Vm(vm_id, "STARTED", False, "REBOOT", 90_000 + k)
        else:
            vm = Vm(vm_id, "STARTED", False)
        vms[vm_id] = vm

    error_down = [k for k, s in enumerate(statuses) if s == "ERROR_down"]
    running = [k for k, s in enumerate(statuses) if s == "running"]
    rng.shuffle(error_down)
    # The last pass's startups, outcome not known yet: half still ERROR_down, half running again.
    pending_down = error_down[: PENDING // 2]
    pending_up = rng.sample(running, PENDING - len(pending_down))
    for k in pending_down:
        vms[FIRST_ID + k] = Vm(FIRST_ID + k, "STARTED", False)  # they were restarted: wanted running
    rest_down = error_down[len(pending_down) :]

    # Jobs: finished ones (old ids), the last pass's startups, and ~1% of N in flight (newest ids).
    next_id = 500_000
    listed: list[dict] = []
    skip = set(pending_up)
    others = [k for k in range(n) if statuses[k] != "ERROR_down" and k not in skip]
    templates = list(jobs_maker.templates.values())
    for k in rng.sample(range(n), n // 100):
        status = "success" if rng.random() < 0.9 else "error"
        listed.append(jobs_maker.make(rng.choice(templates), next_id, status, names[k], uuids[k]))
        next_id += 1
    records: dict[str, Record] = {}
    archived: dict[int, dict | None] = {}
    for j, k in enumerate(pending_down + pending_up):
        status = "error" if k in pending_down else "success"
        job_id, next_id = next_id, next_id + 1
        if j % 2 == 0:  # still listed by Ganeti
            listed.append(jobs_maker.startup(job_id, status, names[k], uuids[k]))
        elif j == 1:  # Ganeti never had it / lost it: GET answers nulls
            archived[job_id] = None
        else:  # archived since: GET /2/jobs/<id> answers the full job
            body = dict(jobs_maker.error if status == "error" else jobs_maker.success, id=job_id)
            archived[job_id] = body
        first = NOW - rng.uniform(600, 3 * 3600)
        attempts = rng.randint(1, 3)
        records[uuids[k]] = Record(names[k], FIRST_ID + k, attempts, first, NOW - 300, job_id, None)
    busy_down = rest_down[: len(rest_down) // 5]  # a fifth of the crashed have a job in flight
    in_flight = busy_down + rng.sample(others, max(0, n // 100 - len(busy_down)))
    for k in in_flight:
        status = IN_FLIGHT[rng.randrange(len(IN_FLIGHT))]
        listed.append(jobs_maker.make(rng.choice(templates), next_id, status, names[k], uuids[k]))
        next_id += 1
    listed.sort(key=lambda j: j["id"])
    busy = {names[k] for k in in_flight}

    # Records for about half the other crashed instances.
    old_job = 100_000
    for k in rest_down:
        if rng.random() >= 0.5:
            continue
        old_job += 1
        kind = rng.random()
        if kind < 0.15:  # gave up earlier, not expired
            first = NOW - rng.uniform(3 * 3600, 6 * 3600)
            last = first + rng.uniform(600, 3600)
            rec = Record(names[k], FIRST_ID + k, 5, first, last, old_job, "error", gave_up=last + 300)
        elif kind < 0.25:  # its last allowed attempt failed: giving up in this pass
            first = NOW - rng.uniform(3600, 4 * 3600)
            rec = Record(names[k], FIRST_ID + k, 5, first, NOW - rng.uniform(600, 1800), old_job, "error")
        elif kind < 0.30:  # expired: forgotten, a fresh budget
            first = NOW - rng.uniform(10 * 3600, 20 * 3600)
            rec = Record(names[k], FIRST_ID + k, 5, first, first + 600, old_job, "error", gave_up=first + 900)
        else:  # in progress
            first = NOW - rng.uniform(900, 6 * 3600)
            last = NOW - rng.uniform(600, NOW - first)
            rec = Record(names[k], FIRST_ID + k, rng.randint(1, 4), first, last, old_job, "canceled")
        records[uuids[k]] = rec
    state = State(instances=records, nodes=dict(boot_ids))

    # Eligible, worked out from the data above (not by snf_watcher).
    eligible = []
    for k in error_down:
        vm, rec = vms[FIRST_ID + k], records.get(uuids[k])
        if vm.deleted or vm.operstate != "STARTED" or vm.task or names[k] in busy:
            continue
        if rec is not None:
            since = rec.last_attempt if rec.last_attempt is not None else rec.first_failure
            if NOW - since > POLICY.retry_expiration:
                rec = None  # expired: as if there were no record
        if rec is not None and (rec.gave_up is not None or rec.attempts >= POLICY.max_tries):
            continue
        eligible.append((rec.first_failure if rec else NOW, names[k]))
    eligible.sort()

    return Cluster(
        n=n,
        instances_body=json.dumps(instances).encode(),
        jobs_body=json.dumps(listed).encode(),
        nodes_rows=nodes_rows,
        archived=archived,
        vms=vms,
        state=state,
        eligible=eligible,
        busy=busy,
        pending=len(archived),
    )


# ---------------------------------------------------------------- RAPI stand-in


class CountingRapi:
    """The Rapi methods `watcher._ganeti` calls, answering the synthetic bodies; counts the calls."""

    def __init__(self, instances: list, nodes: list, jobs: list, archived: dict[int, dict | None]) -> None:
        self._instances, self._nodes, self._jobs, self._archived = instances, nodes, jobs, archived
        self.calls = 0

    def jobs(self) -> list[dict]:
        self.calls += 1
        return self._jobs

    def instances(self) -> list[dict]:
        self.calls += 1
        return self._instances

    def nodes(self) -> list[dict]:
        self.calls += 1
        return self._nodes

    def job(self, job_id: int) -> dict | None:
        self.calls += 1
        return self._archived[job_id]


# ---------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        result = None  # the previous run's result is freed before the clock starts, as in a fresh pass
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


@dataclass
class SizeResult:
    n: int
    loads: list[float]
    snap: list[float]
    decide: list[float]
    loads_nogc: list[float]
    snap_nogc: list[float]
    decide_nogc: list[float]
    bodies_bytes: int
    parsed_bytes: int
    peak_bytes: int
    calls: int
    fixed_calls: int
    lookups: int
    restarts: int
    expected: int
    eligible: int
    rules: Counter
    problems: list[str]


def measure(n: int, seed: int, repeat: int, profile: str | None) -> SizeResult:
    gc.disable()  # setting up (not timed) makes no cyclic garbage: spare it the full collections
    try:
        c = build(n, seed)
    finally:
        gc.enable()
    gc.collect()

    def loads() -> tuple[list, list]:
        return json.loads(c.instances_body), json.loads(c.jobs_body)

    # As a pass runs: the cyclic GC on, its full collections landing wherever they land.
    loads_times, (instances, jobs) = timed(loads, repeat)
    snap_times, _ = timed(lambda: snapshot.ganeti(instances, c.nodes_rows, jobs), repeat)

    # The Ganeti side as the pass builds it: last pass's jobs no longer listed looked up one by one.
    rapi = CountingRapi(instances, c.nodes_rows, jobs, c.archived)
    g = watcher._ganeti(rapi, c.state)
    fixed_calls = 1 + 3  # version (the pass calls it before _ganeti), jobs, instances, nodes
    lookups = rapi.calls - 3
    decide_times, decision = timed(lambda: restart.decide(g, c.vms, c.state, POLICY, NOW), repeat)

    # The same with the cyclic GC off: each step's own cost (json.loads of large bodies spends much
    # of its time in full collections over the objects it has just made).
    gc.collect()
    gc.disable()
    try:
        loads_nogc, _ = timed(loads, repeat)
        snap_nogc, _ = timed(lambda: snapshot.ganeti(instances, c.nodes_rows, jobs), repeat)
        decide_nogc, _ = timed(lambda: restart.decide(g, c.vms, c.state, POLICY, NOW), repeat)
    finally:
        gc.enable()
    restarts = decision.restarts

    problems = []
    expected = [name for _, name in c.eligible[: POLICY.max_restarts]]
    if [v.instance for v in restarts] != expected:
        problems.append(f"restarted {[v.instance for v in restarts]}, expected {expected}")
    for v in restarts:
        vm = c.vms.get(v.vm_id) if v.vm_id is not None else None
        if vm is None or vm.operstate != "STARTED" or vm.deleted or vm.task or v.status != "ERROR_down":
            problems.append(f"{v.instance} restarted, but its VM is {vm} and Ganeti says {v.status}")
        if v.instance in c.busy:
            problems.append(f"{v.instance} restarted with a job in flight")
    if lookups != c.pending:
        problems.append(f"{lookups} GET /2/jobs/<id>, expected {c.pending}")
    rules = Counter(v.rule for v in decision.verdicts)

    # Memory: the parsed bodies first (context), then the peak of snapshot + decide on top of them.
    del decision, g
    instances = jobs = None
    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    gc.disable()  # the parse makes no garbage, and its full collections are slow under tracemalloc
    instances, jobs = loads()
    gc.enable()
    gc.collect()  # no collection pending from the parse to land in the peak below
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    g = snapshot.ganeti(instances, c.nodes_rows, jobs)
    restart.decide(g, c.vms, c.state, POLICY, NOW)
    peak = tracemalloc.get_traced_memory()[1] - m1
    tracemalloc.stop()

    if profile:
        gc.collect()  # no full collection left pending from the parse above to land in the profile
        profiler = cProfile.Profile()
        profiler.enable()
        g = snapshot.ganeti(instances, c.nodes_rows, jobs)
        restart.decide(g, c.vms, c.state, POLICY, NOW)
        profiler.disable()
        profiler.dump_stats(profile)

    return SizeResult(
        n=n,
        loads=loads_times,
        snap=snap_times,
        decide=decide_times,
        loads_nogc=loads_nogc,
        snap_nogc=snap_nogc,
        decide_nogc=decide_nogc,
        bodies_bytes=len(c.instances_body) + len(c.jobs_body),
        parsed_bytes=m1 - m0,
        peak_bytes=peak,
        calls=fixed_calls + lookups + len(restarts),
        fixed_calls=fixed_calls,
        lookups=lookups,
        restarts=len(restarts),
        expected=min(POLICY.max_restarts, len(c.eligible)),
        eligible=len(c.eligible),
        rules=rules,
        problems=problems,
    )


def ms(values: list[float]) -> str:
    return f"best {1e3 * min(values):8.1f} ms, median {1e3 * statistics.median(values):8.1f} ms"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", default="10000,100000", help="instance counts, comma-separated (default 10000,100000)"
    )
    p.add_argument(
        "--repeat", type=int, default=5, help="timed runs of each step (default 5; best and median)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--profile", metavar="FILE", help="cProfile of snapshot.ganeti + decide for the largest size"
    )
    args = p.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1000:
        p.error("--sizes: at least 1000 instances each")

    report = benchlib.Report("watcher_decide: snapshot.ganeti + restart.decide on synthetic clusters")
    results = []
    for n in sizes:
        results.append(measure(n, args.seed, max(1, args.repeat), args.profile if n == sizes[-1] else None))

    report.info(
        f"policy: max_restarts {POLICY.max_restarts}, max_tries {POLICY.max_tries}; best and median of "
        f"{max(1, args.repeat)} runs; (a) json.loads of the instances + jobs bodies is the baseline"
    )
    for r in results:
        a, b, c = min(r.loads), min(r.snap), min(r.decide)
        per = 1e6 / r.n
        report.info(f"N = {r.n:,} instances, {r.n // PER_NODE:,} nodes")
        report.info(f"  (a) json.loads:      {ms(r.loads)}  = {a * per:5.2f} us/instance")
        report.info(f"  (b) snapshot.ganeti: {ms(r.snap)}  = {b * per:5.2f} us/instance")
        report.info(f"  (c) restart.decide:  {ms(r.decide)}  = {c * per:5.2f} us/instance")
        report.info(
            f"  (b)+(c) = {1e3 * (b + c):.1f} ms = {(b + c) * per:.2f} us/instance; "
            f"ratio to (a): {(b + c) / a:.2f}x"
        )
        a0, b0, c0 = min(r.loads_nogc), min(r.snap_nogc), min(r.decide_nogc)
        report.info(
            f"  cyclic GC off (best): (a) {1e3 * a0:.1f} ms, (b) {1e3 * b0:.1f} ms, (c) {1e3 * c0:.1f} ms; "
            f"(b)+(c) ratio to (a): {(b0 + c0) / a0:.2f}x  (GC's share of (a): {1 - a0 / a:.0%})"
        )
        report.info(
            f"  memory: peak {mib(r.peak_bytes)} building the snapshot and deciding; "
            f"bodies {mib(r.bodies_bytes)} as bytes, {mib(r.parsed_bytes)} parsed"
        )
        report.info(
            f"  RAPI calls per pass: {r.calls} = {r.fixed_calls} (version, jobs, instances, nodes) "
            f"+ {r.lookups} GET /2/jobs/<id> + {r.restarts} startups"
        )
        report.info(
            f"  decision: {r.restarts} restarts of {r.eligible} eligible; verdicts "
            + ", ".join(f"{rule} {count}" for rule, count in sorted(r.rules.items()))
        )
        for line in r.problems[:5]:
            report.info(f"  PROBLEM {line}")
    if args.profile:
        report.info(f"profile of snapshot.ganeti + decide for N = {sizes[-1]:,}: {args.profile}")

    big = results[-1]
    total = min(big.snap) + min(big.decide)
    ratio = total / min(big.loads)
    ratio_nogc = (min(big.snap_nogc) + min(big.decide_nogc)) / min(big.loads_nogc)
    report.target(f"N = {big.n:,}: (b)+(c) {total:.3f} s < {TARGET_SECONDS:.0f} s", total < TARGET_SECONDS)
    report.target(
        f"N = {big.n:,}: (b)+(c) {ratio:.2f}x (GC on), {ratio_nogc:.2f}x (GC off) <= {TARGET_RATIO:.0f}x "
        "the json.loads baseline",
        max(ratio, ratio_nogc) <= TARGET_RATIO,
    )
    calls = {r.n: r.calls for r in results}
    report.target(
        "RAPI calls per pass the same for every N: " + ", ".join(f"{n:,}: {k}" for n, k in calls.items()),
        len(set(calls.values())) == 1,
    )
    for r in results:
        report.target(
            f"N = {r.n:,}: {r.restarts} restarts = min(max_restarts, {r.eligible} eligible) = {r.expected}, "
            "oldest failures first, all of STARTED VMs with nothing in flight",
            r.restarts == r.expected and not r.problems,
        )
    code = report.finish()
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(12)
    return code


if __name__ == "__main__":
    sys.exit(main())
