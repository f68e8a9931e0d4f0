#!/usr/bin/env python3
"""Delivery throughput: outbox messages applied per second to Synnefo's PostgreSQL.

A throwaway PostgreSQL 15 (tests/pgserver.py, fsync ON: a commit costs what
it costs on this machine's disk) is loaded with Synnefo's schema and seed
(tests/synnefo), plus 2,000 VM rows of our own (ids 1000..2999, backend 1,
flavor 1, STOPPED). 20,000 `ganeti-op-status` messages (10 per VM, built by
snf_watcher.messages.op_status, so their shape is the real one) describe a
busy cluster: each VM runs three jobs one after the other (startup, shutdown,
reboot, with some errors and cancels; queued/waiting/running/final as Ganeti
reports them), ~100 VMs' jobs in progress at once, interleaved, job ids in
submission order, master event times increasing.

Ours: the messages are stored in a fresh SQLite outbox (Outbox.store_jobs, the
path snf-ganeti-eventd uses; not timed), then `Delivery(cfg, outbox).drain()`
is timed with the default batch size (500), from the first outbox read to the
last outbox settle, connection already open.

Baseline, same run, same server, a fresh database from the same template: the
same messages applied the way Synnefo's dispatcher applied them, one
transaction per message (see `synnefo_dispatch`), connection already open.

Correctness: afterwards every one of the VMs must have the same operstate,
backendjobid and backendjobstatus in both databases, and the values the
message streams say (worked out here from the streams, not by snf_watcher).

Target: ours >= 10x the baseline's messages/s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import benchlib
import psycopg2

sys.path.insert(0, str(benchlib.REPO / "tests"))
from pgserver import PgServer, SynnefoDb  # noqa: E402  (tests/ is no package)

from snf_watcher import config, messages  # noqa: E402
from snf_watcher.delivery import Delivery  # noqa: E402
from snf_watcher.outbox import JobMark, JobRecord, Outbox  # noqa: E402

TARGET_RATIO = 10.0
FIRST_VM = 1000
BACKEND = 1
CLUSTER = "cluster.ganeti.test"
START_TIME = 1_795_254_564  # the recordings' epoch (tests/fixtures/ganeti-3.0.2)

# A VM's 10 messages: three jobs, run one after the other (Ganeti serialises an
# instance's jobs on its lock). (opcode, statuses) per job; the VMs start STOPPED.
STREAMS = (
    (("OP_INSTANCE_STARTUP", "qwrs"), ("OP_INSTANCE_SHUTDOWN", "qwrs"), ("OP_INSTANCE_REBOOT", "qc")),
    (("OP_INSTANCE_STARTUP", "qwrs"), ("OP_INSTANCE_REBOOT", "qwrs"), ("OP_INSTANCE_SHUTDOWN", "qc")),
    (("OP_INSTANCE_STARTUP", "qwre"), ("OP_INSTANCE_STARTUP", "qwrs"), ("OP_INSTANCE_REBOOT", "qc")),
    (("OP_INSTANCE_STARTUP", "qwe"), ("OP_INSTANCE_STARTUP", "qwrs"), ("OP_INSTANCE_SHUTDOWN", "qwe")),
    (("OP_INSTANCE_STARTUP", "qwrs"), ("OP_INSTANCE_SHUTDOWN", "qwrs"), ("OP_INSTANCE_STARTUP", "qc")),
)
STATUS = {"q": "queued", "w": "waiting", "r": "running", "s": "success", "e": "error", "c": "canceled"}
# Ganeti's results and log lines for the final statuses (from the recordings).
RESULT = {
    "error": ["OpPrereqError", ["Instance is not in the required state", "wrong_state"]],
    "canceled": "Job canceled by request",
}
LOGMSG = {"error": "Failure: prerequisites not met for this operation"}


# ---------------------------------------------------------------- the messages


def build_messages(n_vms: int, concurrent: int, seed: int) -> list[dict]:
    """Every VM's stream, interleaved as a busy cluster produces them, in event-time order."""
    rng = random.Random(seed)
    plans = []
    for _ in range(n_vms):
        jobs = STREAMS[rng.randrange(len(STREAMS))]
        plans.append([(opcode, STATUS[s], k) for k, (opcode, statuses) in enumerate(jobs) for s in statuses])
    out: list[dict] = []
    waiting = list(range(n_vms))
    rng.shuffle(waiting)
    active: list[list] = []  # [vm index, next step, job ids so far]
    next_job = 100_001
    clock = START_TIME * 1_000_000
    while waiting or active:
        while waiting and len(active) < concurrent:
            active.append([waiting.pop(), 0, {}])
        slot = active[rng.randrange(len(active))]
        vm, step, job_ids = slot
        opcode, status, k = plans[vm][step]
        if k not in job_ids:
            job_ids[k] = next_job
            next_job += 1
        clock += rng.randint(200, 3000)  # the master's clock, microseconds
        out.append(
            messages.op_status(
                instance=f"snf-{FIRST_VM + vm}",
                tags=[],
                operation=opcode,
                status=status,
                job_id=job_ids[k],
                op_index=0,
                logmsg=LOGMSG.get(status),
                result=RESULT.get(status),
                event_time=[clock // 1_000_000, clock % 1_000_000],
                cluster=CLUSTER,
                job_fields={},
            )
        )
        slot[1] += 1
        if slot[1] == len(plans[vm]):
            active.remove(slot)
    return out


def expected_rows(msgs: list[dict]) -> dict[int, tuple[str, int, str]]:
    """(operstate, backendjobid, backendjobstatus) per VM, read off the in-order streams."""
    rows: dict[int, tuple[str, int, str]] = {}
    for m in msgs:
        vm = int(m["instance"][4:])
        oper = rows.get(vm, ("STOPPED", 0, ""))[0]
        if m["status"] == "success":
            oper = SYNNEFO_OPER_STATE.get(m["operation"]) or oper
        rows[vm] = (oper, m["jobId"], m["status"])
    return rows


# ---------------------------------------------------------------- the database


# ---------------------------------------------------------------- baseline: Synnefo's dispatcher

# synnefo/db/models.py VirtualMachine.OPER_STATE_FROM_OPCODE (the opcodes that map to a state)
SYNNEFO_OPER_STATE = {
    "OP_INSTANCE_CREATE": "STARTED",
    "OP_INSTANCE_REMOVE": "DESTROYED",
    "OP_INSTANCE_STARTUP": "STARTED",
    "OP_INSTANCE_SHUTDOWN": "STOPPED",
    "OP_INSTANCE_REBOOT": "STARTED",
}


def synnefo_dispatch(conn: psycopg2.extensions.connection, body: str) -> bool:
    """Apply one ganeti-op-status message as Synnefo's dispatcher did; True if it changed the row.

    Reproduces, for the messages of this benchmark (instance jobs without NIC,
    disk or flavor changes), synnefo/logic/callbacks.py `update_db` with its
    decorators and synnefo/logic/backend.py `process_op_status`:

    - the message body is decoded from JSON (it arrives as AMQP bytes);
    - `handle_message_delivery`: one database transaction per message;
    - `instance_from_msg`: the VM id from the name `snf-<id>`, the row read
      with `VirtualMachine.objects.select_for_update().get(id=...)` (all
      columns, FOR UPDATE); a missing or deleted VM ignores the message;
    - `if_update_required`: event_time = merge_time(msg["event_time"]); the
      message is dropped as stale if event_time <= backendtime;
    - `process_op_status`: backendjobid/backendjobstatus/backendopcode/
      backendlogmsg always; on success the operstate of a mapped opcode
      (OPER_STATE_FROM_OPCODE) and backendtime = event_time (backendtime moves
      only on success); a failed or canceled OP_INSTANCE_CREATE sets ERROR and
      backendtime; then `vm.save()`, whose auto_now sets `updated`. Here the
      UPDATE names only these columns (Django's save() writes every column).
    """
    msg = json.loads(body)
    vm_id = int(msg["instance"][len("snf-") :])
    seconds, micros = msg["event_time"]
    event_time = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)  # merge_time
    changed = False
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM db_virtualmachine WHERE id = %s FOR UPDATE", (vm_id,))
        row = cur.fetchone()
        if row is not None:
            columns = [d.name for d in cur.description]
            vm = dict(zip(columns, row, strict=True))
            if not vm["deleted"] and not (vm["backendtime"] and event_time <= vm["backendtime"]):
                opcode, status = msg["operation"], msg["status"]
                sets = {
                    "backendjobid": msg["jobId"],
                    "backendjobstatus": status,
                    "backendopcode": opcode,
                    "backendlogmsg": msg["logmsg"],
                }
                if status == "success":
                    if SYNNEFO_OPER_STATE.get(opcode):
                        sets["operstate"] = SYNNEFO_OPER_STATE[opcode]
                    sets["backendtime"] = event_time
                if opcode == "OP_INSTANCE_CREATE" and status in ("canceled", "error"):
                    sets["operstate"] = "ERROR"
                    sets["backendtime"] = event_time
                sets["updated"] = datetime.now(UTC)
                assignments = ", ".join(f"{k} = %s" for k in sets)
                cur.execute(
                    f"UPDATE db_virtualmachine SET {assignments} WHERE id = %s", [*sets.values(), vm_id]
                )
                changed = True
    conn.commit()
    return changed


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    seconds: float
    cpu: float  # this process's CPU seconds in the timed section
    applied: int
    transactions: int
    skipped: int = 0
    dead: int = 0


def run_ours(server: PgServer, dbname: str, root: Path, msgs: list[dict], profile: str | None) -> Run:
    outbox_path = str(root / "outbox.sqlite")
    box = Outbox(outbox_path)
    records = [
        JobRecord(
            m["jobId"],
            JobMark(reported=(0,), finished=m["status"] in benchlib.FINAL, received=None),
            [(f"op:{m['jobId']}:{m['opIndex']}:{m['status']}", m)],
            [],
        )
        for m in msgs
    ]
    for start in range(0, len(records), 2000):
        box.store_jobs(records[start : start + 2000])
    if box.pending_count() != len(msgs):
        sys.exit(f"the outbox holds {box.pending_count()} messages, not {len(msgs)}")
    cfg = config.from_mapping(
        {
            "outbox": {"path": outbox_path, "spool_dir": str(root / "spool")},
            "database": {"dsn": server.dsn(dbname), "backend_id": BACKEND},
        }
    )
    delivery = Delivery(cfg, box)
    try:
        delivery.db.connect()  # as the baseline: the connection is open before the clock starts
        benchlib.drop_dirty_pages()
        profiler = cProfile.Profile() if profile else None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        totals = delivery.drain()
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if profiler:
            profiler.dump_stats(profile)
        left = box.pending_count()
    finally:
        delivery.close()
        box.close()
    if left:
        sys.exit(f"drain() returned with {left} messages still in the outbox")
    return Run(elapsed, cpu, totals.delivered, totals.batches, totals.skipped, totals.dead)


def run_baseline(server: PgServer, dbname: str, msgs: list[dict]) -> Run:
    bodies = [json.dumps(m, separators=(",", ":")) for m in msgs]  # as they would come off the queue
    conn = psycopg2.connect(server.dsn(dbname))
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")  # Synnefo's Django session: TIME_ZONE = 'UTC'
        conn.commit()
        benchlib.drop_dirty_pages()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        applied = sum(synnefo_dispatch(conn, body) for body in bodies)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        conn.close()
    return Run(elapsed, cpu, applied, len(bodies), skipped=len(bodies) - applied)


def compare(
    ours: dict[int, tuple], base: dict[int, tuple], expected: dict[int, tuple]
) -> tuple[bool, list[str]]:
    problems = []
    for vm in sorted(expected):
        if ours.get(vm) != base.get(vm) or ours.get(vm) != expected[vm]:
            problems.append(
                f"VM {vm}: ours {ours.get(vm)}, baseline {base.get(vm)}, the streams say {expected[vm]}"
            )
    return not problems, problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=2000, help="VM rows added and streamed (default 2000)")
    p.add_argument(
        "--concurrent", type=int, default=100, help="VMs with a job in progress at once (default 100)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", metavar="FILE", help="run our drain() under cProfile, stats to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (outbox) for inspection")
    args = p.parse_args()

    msgs = build_messages(args.vms, max(1, args.concurrent), args.seed)
    expected = expected_rows(msgs)
    report = benchlib.Report("delivery_throughput: outbox messages -> Synnefo's PostgreSQL (fsync on)")
    root = Path(tempfile.mkdtemp(prefix="snf-bench-delivery-"))
    server = None
    try:
        server = PgServer(fsync=True)
        server.start()
        server.create_template()
        ours_db, base_db = server.new_database(), server.new_database()
        for db in (ours_db, base_db):
            SynnefoDb(db, server.dsn(db), server).add_vms(range(FIRST_VM, FIRST_VM + args.vms))

        ours = run_ours(server, ours_db, root, msgs, args.profile)
        base = run_baseline(server, base_db, msgs)
        ok, problems = compare(
            *(
                benchlib.vm_job_rows(SynnefoDb(db, server.dsn(db), server), list(expected))
                for db in (ours_db, base_db)
            ),
            expected,
        )
    finally:
        if server is not None:
            server.destroy()
        benchlib.remove_unless_kept(root, args.keep)

    n = len(msgs)
    ours_rate, base_rate = n / ours.seconds, n / base.seconds
    ratio = ours_rate / base_rate
    jobs = len({m["jobId"] for m in msgs})
    report.info(
        f"messages: {n} ganeti-op-status for {args.vms} VMs ({n // args.vms} each, {jobs} jobs), "
        f"{args.concurrent} VMs' jobs interleaved; PostgreSQL 15, fsync on"
    )
    report.info(
        f"ours:     {ours.seconds:.3f} s = {ours_rate:,.0f} messages/s  (Delivery.drain, batch_size 500: "
        f"{ours.transactions} transactions, {n / max(1, ours.transactions):.0f} messages/transaction; "
        f"{ours.applied} applied, {ours.skipped} skipped, {ours.dead} dead; "
        f"our CPU {ours.cpu:.2f} s = {1e6 * ours.cpu / n:.0f} us/message)"
    )
    report.info(
        f"baseline: {base.seconds:.3f} s = {base_rate:,.0f} messages/s  (Synnefo's dispatcher: "
        f"{base.transactions} transactions, 1 message/transaction; {base.applied} applied, "
        f"{base.skipped} stale; client CPU {base.cpu:.2f} s = {1e6 * base.cpu / n:.0f} us/message)"
    )
    report.info(f"ratio ours/baseline: {ratio:.2f}x")
    report.info(f"final rows: {len(expected)} VMs compared (operstate, backendjobid, backendjobstatus)")
    for line in problems[:10]:
        report.info(f"  MISMATCH {line}")
    if args.profile:
        report.info(f"profile of our drain(): {args.profile}")
    report.target(f"throughput ratio {ratio:.2f}x >= {TARGET_RATIO:.0f}x the baseline", ratio >= TARGET_RATIO)
    report.target(
        f"final rows equal in both databases and as the streams say: "
        f"{'yes' if ok else f'NO ({len(problems)} VMs differ)'}",
        ok,
    )
    report.target(
        f"every message applied by ours: {ours.applied} of {n}, {ours.dead} dead",
        ours.applied == n and ours.dead == 0,
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
