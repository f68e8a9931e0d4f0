#!/usr/bin/env python3
"""Delivery latency: from Ganeti's rename of a job file to the committed database row.

The installed snf-ganeti-eventd runs on a temp queue dir, with ssconf saying
this node is the master, and delivers (its delivery thread) into a throwaway
PostgreSQL 15 (tests/pgserver.py, fsync on) loaded with Synnefo's schema and
seed plus one VM row per job (STOPPED, backend 1). A writer renames job-file
versions into the queue at a steady rate (200/s, then 1,000/s), each version
written as Ganeti's writers do (temp file, then rename over `job-<id>`): the
recorded Ganeti 3.0.2 sequences of a startup, shutdown, reboot and a failed
startup (6 versions each: queued x3, waiting, running, final), one job per VM
(`snf-<id>`), ~1.5 s per job so that jobs of many VMs overlap, and the times
inside each file are the wall times of the schedule.

What is measured, per job: rename of its final version -> the VM row first
showing that job's final status (backendjobid and backendjobstatus). The
writer reads CLOCK_MONOTONIC right after each rename. A poller process (its
own process, so it never holds the writer's GIL between a rename and its clock
reading) asks PostgreSQL every `--poll` ms, from its own connection and by
primary key, for the jobs whose final version is due by the schedule and not
yet seen; the time a row is first seen is the end of that query
(CLOCK_MONOTONIC too), so each figure is an upper bound, late by at most one
poll period plus one query (the resolution, printed). One job per VM makes the
row's final status the last thing written to it, so "first seen" is
unambiguous. Jobs finishing in the first second (warm-up) are not counted.

Cross-check (lower bound): the server runs with track_commit_timestamp = on,
and after each run `pg_xact_commit_timestamp(xmin)` of every VM row gives
when the transaction that wrote the final status committed. PostgreSQL takes
that time when it writes the commit record, before the WAL flush and before
the row becomes visible, so the true latency lies between the two figures.

Baseline, same run: the floor of the same pipeline, eventd's own ingest
latency. The same schedule is replayed into a second eventd configured
without a database, and the same poller watches its outbox (SQLite, read only)
for the final status row of each job: rename -> message durable in the outbox.
Delivery's share is the difference; the ratio full/floor is printed.

The outboxes and PostgreSQL's data dir are on disk (/tmp), so both commits
are real fsyncs, as on a master. The job queues are on tmpfs (/dev/shm) by
default, as in eventd_ingest.py: on this machine's disk one temp-file write
+ rename over the job file costs ~0.7 ms of CPU (ext4's replace-by-rename
flush), so at 1,000/s the writer alone would take 70% of one of the two cores
and the figure would measure Ganeti's writes competing with the daemon for
CPU; `--queue-tmpdir /tmp` measures that case.

Target: p99 under 250 ms at 1,000/s.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import multiprocessing
import os
import random
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import benchlib
import psycopg2

sys.path.insert(0, str(benchlib.REPO / "tests"))
from pgserver import PgServer, SynnefoDb  # noqa: E402  (tests/ is no package)

TARGET_P99 = 0.250  # seconds, at 1,000/s
TARGET_RATE = 1000
FIRST_VM = 1000
BACKEND = 1
WARMUP_VM = 102  # the seed's STOPPED VM: a first job, to have everything connected and warm
WARMUP = 1.0  # seconds at the start of a run whose jobs are not counted
JOB_SECONDS = 1.5  # each job's versions spread over about this long
# Recorded single-op instance jobs (tests/fixtures/ganeti-3.0.2/queue), 6 versions each.
TEMPLATE_JOBS = (9, 17, 10, 18)  # startup, shutdown, reboot: success; startup: error
# Synnefo's operstate after a successful op (the VMs start STOPPED; a failed startup leaves it)
OPER_ON_SUCCESS = {
    "OP_INSTANCE_STARTUP": "STARTED",
    "OP_INSTANCE_SHUTDOWN": "STOPPED",
    "OP_INSTANCE_REBOOT": "STARTED",
}
TS_FIELDS = ("received_timestamp", "start_timestamp", "end_timestamp")
OP_TS_FIELDS = ("start_timestamp", "exec_timestamp", "end_timestamp")


# ---------------------------------------------------------------- the schedule


@dataclass
class Job:
    job_id: int
    vm: int
    opcode: str
    final: str  # the final op status
    versions: list[bytes] = field(default_factory=list)
    writers: tuple[str, ...] = ()
    renamed: float | None = None  # monotonic time the final version was renamed in
    renamed_wall: float | None = None  # the same moment, wall clock
    seen: float | None = None  # monotonic time the final status was first seen
    committed_wall: float | None = None  # commit timestamp of the row's last writer

    def expected_row(self) -> tuple[str, int, str]:
        oper = OPER_ON_SUCCESS.get(self.opcode, "STOPPED") if self.final == "success" else "STOPPED"
        return oper, self.job_id, self.final


def split_time(t: float) -> list[int]:
    sec = int(t)
    return [sec, min(999_999, int((t - sec) * 1_000_000))]


def versions_at(template: benchlib.Template, job_id: int, vm: int, times: list[float]) -> list[bytes]:
    """The recorded versions renumbered, on instance snf-<vm>, each timestamp at the wall time of the
    version it first appears in (Ganeti stamps a status as it writes the version that shows it)."""
    docs = [json.loads(benchlib.renumber(v, template.job_id, job_id)) for v in template.versions]
    first: dict[tuple, int] = {}
    for k, doc in enumerate(docs):
        for name in TS_FIELDS:
            if doc.get(name) is not None:
                first.setdefault((name,), k)
        for i, op in enumerate(doc["ops"]):
            for name in OP_TS_FIELDS:
                if op.get(name) is not None:
                    first.setdefault((i, name), k)
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        for name in TS_FIELDS:
            if doc.get(name) is not None:
                doc[name] = split_time(times[first[(name,)]] - 0.0002)
        for i, op in enumerate(doc["ops"]):
            op["input"]["instance_name"] = f"snf-{vm}"
            for name in OP_TS_FIELDS:
                if op.get(name) is not None:
                    op[name] = split_time(times[first[(i, name)]] - 0.0002)
        out.append(json.dumps(doc).encode())
    return out


def interleave(n_jobs: int, n_versions: int, window: int, rng: random.Random) -> list[tuple[int, int]]:
    """(job index, version index) in rename order: up to *window* jobs in progress, picked at random."""
    order: list[tuple[int, int]] = []
    waiting = collections.deque(range(n_jobs))
    active: list[list[int]] = []
    while waiting or active:
        while waiting and len(active) < window:
            active.append([waiting.popleft(), 0])
        slot = active[rng.randrange(len(active))]
        order.append((slot[0], slot[1]))
        slot[1] += 1
        if slot[1] == n_versions:
            active.remove(slot)
    return order


@dataclass
class Schedule:
    rate: float
    jobs: list[Job]
    order: list[tuple[int, int]]  # (job index, version index), one rename every 1/rate s
    start_wall: float  # planned wall time of the first rename


def make_schedule(rate: float, seconds: float, first_job: int, seed: int) -> Schedule:
    templates = {t.job_id: t for t in benchlib.load_templates()}
    missing = [j for j in TEMPLATE_JOBS if j not in templates]
    if missing:
        sys.exit(f"recorded jobs {missing} are missing from {benchlib.QUEUE_FIXTURES}")
    chosen = [templates[j] for j in TEMPLATE_JOBS]
    n_versions = len(chosen[0].versions)
    assert all(len(t.versions) == n_versions for t in chosen)
    rng = random.Random(seed)
    n_jobs = max(1, int(rate * seconds) // n_versions)
    window = max(1, round(rate * JOB_SECONDS / n_versions))
    order = interleave(n_jobs, n_versions, window, rng)
    start_wall = time.time() + 1.5 + n_jobs / 5000  # after building the files
    when: dict[tuple[int, int], float] = {jv: start_wall + k / rate for k, jv in enumerate(order)}
    jobs = []
    for j in range(n_jobs):
        t = chosen[rng.randrange(len(chosen))]
        job = Job(first_job + j, FIRST_VM + j, json.loads(t.versions[0])["ops"][0]["input"]["OP_ID"], "")
        job.final = t.final_statuses[0]
        job.writers = t.writers
        job.versions = versions_at(t, job.job_id, job.vm, [when[(j, v)] for v in range(n_versions)])
        jobs.append(job)
    return Schedule(rate, jobs, order, start_wall)


def warmup_job(job_id: int, vm: int) -> Job:
    t = {t.job_id: t for t in benchlib.load_templates()}[TEMPLATE_JOBS[0]]
    now = time.time()
    job = Job(job_id, vm, "OP_INSTANCE_STARTUP", t.final_statuses[0], writers=t.writers)
    job.versions = versions_at(t, job_id, vm, [now] * len(t.versions))
    return job


# ---------------------------------------------------------------- writer and pollers


def temp_name(job_id: int, writer: str, n: int, rng: random.Random) -> str:
    """A temp file name as Ganeti's writers make them (neither matches ^job-\\d+$)."""
    if writer == "luxid":
        return f"job-{job_id}-{os.getpid()}-{n}.tmp"
    return f"job-{job_id}{''.join(rng.choices('abcdefghijklmnopqrstuvwxyz0123456789_', k=9))}.new"


def write_version(queue_dir: Path, job: Job, v: int, n: int, rng: random.Random) -> None:
    """One version as Ganeti writes it: a temp file in the queue dir, renamed over job-<id>."""
    tmp = queue_dir / temp_name(job.job_id, job.writers[v], n, rng)
    with open(tmp, "wb") as f:
        f.write(job.versions[v])
    os.rename(tmp, queue_dir / f"job-{job.job_id}")


class Watch(NamedTuple):
    """A job the poller waits for: its VM, its final status, when its final version is due."""

    job_id: int
    vm: int
    final: str
    due: float  # monotonic time the schedule renames its final version at


class DatabaseLook:
    """Which watched jobs' final statuses PostgreSQL shows (by primary key, autocommit)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.cur = self.conn.cursor()

    def look(self, watches: list[Watch]) -> list[Watch]:
        self.cur.execute(
            "SELECT id, backendjobid, backendjobstatus FROM db_virtualmachine WHERE id = ANY(%s)",
            ([w.vm for w in watches],),
        )
        rows = {vm: (job_id, status) for vm, job_id, status in self.cur.fetchall()}
        return [w for w in watches if rows.get(w.vm) == (w.job_id, w.final)]

    def close(self) -> None:
        self.conn.close()


class OutboxLook:
    """Which watched jobs' final statuses the outbox holds (SQLite, read only)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        self.last_seq = 0
        self.stored: set[str] = set()

    def look(self, watches: list[Watch]) -> list[Watch]:
        rows = self.db.execute("SELECT seq, key FROM outbox WHERE seq > ? ORDER BY seq", (self.last_seq,))
        for seq, key in rows:
            self.last_seq = seq
            self.stored.add(key)
        return [w for w in watches if f"op:{w.job_id}:0:{w.final}" in self.stored]

    def close(self) -> None:
        self.db.close()


def open_look(dsn: str | None, outbox: Path) -> DatabaseLook | OutboxLook:
    return DatabaseLook(dsn) if dsn else OutboxLook(str(outbox))


def poll_main(dsn: str | None, outbox: Path, period: float, watches: list[Watch], pipe: Any) -> None:
    """The poller process: from each job's due time on, look every *period* s until it is seen.

    A process of its own, so that it never holds the writer's GIL: the writer
    reads the clock right after each rename. Sends back ({job id: first seen},
    query durations); first seen is the end of the query that saw it.
    """
    try:
        look = open_look(dsn, outbox)
        pending = sorted(watches, key=lambda w: w.due)
        end = pending[-1].due + 60 if pending else 0.0
        waiting: dict[int, Watch] = {}
        seen: dict[int, float] = {}
        query_times: list[float] = []
        i = 0
        next_poll = time.monotonic()
        while (i < len(pending) or waiting) and time.monotonic() < end:
            now = time.monotonic()
            while i < len(pending) and pending[i].due <= now:
                waiting[pending[i].job_id] = pending[i]
                i += 1
            if waiting:
                q0 = time.monotonic()
                found = look.look(list(waiting.values()))
                q1 = time.monotonic()
                query_times.append(q1 - q0)
                for w in found:
                    seen[w.job_id] = q1
                    del waiting[w.job_id]
            next_poll = max(next_poll + period, time.monotonic())
            time.sleep(max(0.0, next_poll - time.monotonic()))
        look.close()
        pipe.send((seen, query_times))
    except BaseException as e:  # noqa: BLE001 -- handed to the benchmark, which raises it
        pipe.send(RuntimeError(f"poller: {type(e).__name__}: {e}"))
    finally:
        pipe.close()


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    rate: float
    jobs: list[Job]
    measured: list[Job]
    renames: int
    rename_seconds: float
    late: list[float]  # how late each rename was against the schedule
    query_times: list[float]
    daemon_cpu: float
    problems: list[str]
    exit_code: int
    unseen: int
    delivered: int  # messages delivered (the outbox's counter), warm-up included
    transactions: int = 0  # delivery's database transactions (pg_stat_statements)
    statements: int = 0  # and statements, BEGIN and COMMIT included

    def latencies(self) -> list[float]:
        return [j.seen - j.renamed for j in self.measured]

    def commit_latencies(self) -> list[float]:
        return [j.committed_wall - j.renamed_wall for j in self.measured if j.committed_wall is not None]

    def seen_after_commit(self) -> list[float]:
        """Per job, first seen minus commit timestamp: never negative if both clocks are right."""
        return [
            (j.seen - j.renamed) - (j.committed_wall - j.renamed_wall)
            for j in self.measured
            if j.committed_wall is not None
        ]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(root: Path, queue_dir: Path, dsn: str | None) -> Path:
    cfg = benchlib.write_daemon_config(root, queue_dir)
    if dsn is not None:
        with open(cfg, "a") as f:
            f.write(f"database:\n  dsn: {json.dumps(dsn)}\n  backend_id: {BACKEND}\n")
    return cfg


def wait_seen(look: DatabaseLook | OutboxLook, job: Job, timeout: float) -> None:
    watch = Watch(job.job_id, job.vm, job.final, 0.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if look.look([watch]):
            return
        time.sleep(0.01)
    raise TimeoutError(f"job {job.job_id} (warm-up) never showed its final status within {timeout}s")


def one_run(
    root: Path,
    queue_dir: Path,
    rate: float,
    seconds: float,
    dsn: str | None,
    poll: float,
    seed: int,
    profile: str | None = None,
) -> RunResult:
    """One eventd on a fresh queue and outbox (delivering to *dsn*, or not at all), driven at *rate*."""
    root.mkdir()
    queue_dir.mkdir()
    (queue_dir / "serial").write_text("0\n")
    outbox = root / "outbox.sqlite"
    cfg = write_config(root, queue_dir, dsn)
    daemon = benchlib.Daemon(cfg, profile=profile)
    poller = None
    try:
        daemon.wait_for_line("caught up", timeout=30)
        rng = random.Random(seed)
        warm = warmup_job(1, WARMUP_VM)
        for v in range(len(warm.versions)):
            write_version(queue_dir, warm, v, v, rng)
        look = open_look(dsn, outbox)
        try:
            wait_seen(look, warm, timeout=30)
        finally:
            look.close()  # before the fork: the poller opens its own

        sched = make_schedule(rate, seconds, first_job=2, seed=seed)
        n = len(sched.order)
        last = {j: k for k, (j, _) in enumerate(sched.order)}  # index of each job's final rename
        # One clock for the writer and the poller: CLOCK_MONOTONIC, the same in both processes.
        # The wall clock serves only the commit-timestamp cross-check.
        t0 = time.monotonic() + max(0.2, sched.start_wall - time.time())
        watches = [
            Watch(job.job_id, job.vm, job.final, t0 + last[j] / rate) for j, job in enumerate(sched.jobs)
        ]
        ctx = multiprocessing.get_context("fork")
        results, pipe = ctx.Pipe(duplex=False)
        poller = ctx.Process(target=poll_main, args=(dsn, outbox, poll, watches, pipe), daemon=True)
        poller.start()
        pipe.close()
        late = [0.0] * n
        cpu0 = cpu_seconds(daemon.proc.pid)
        for k, (j, v) in enumerate(sched.order):
            target = t0 + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            job = sched.jobs[j]
            write_version(queue_dir, job, v, k, rng)
            now = time.monotonic()
            wall = time.time()
            late[k] = now - target
            if k == last[j]:
                job.renamed, job.renamed_wall = now, wall
        t_end = time.monotonic()
        if not results.poll(90):
            raise TimeoutError("the poller process sent nothing within 90 s of the last rename")
        got = results.recv()
        if isinstance(got, BaseException):
            raise got
        seen, query_times = got
        poller.join(timeout=10)
        for job in sched.jobs:
            job.seen = seen.get(job.job_id)
        daemon_cpu = cpu_seconds(daemon.proc.pid) - cpu0
        if dsn is not None:
            read_commit_times(dsn, sched.jobs)
        rc = daemon.stop()
        with closing(benchlib.open_outbox_ro(outbox)) as box:
            delivered = dict(box.execute("SELECT name, value FROM counters")).get("delivered", 0)
        problems = [
            line for line in daemon.problems() if "no database.dsn configured" not in line or dsn is not None
        ]
    finally:
        daemon.stop()
        if poller is not None and poller.is_alive():
            poller.terminate()
            poller.join(timeout=10)
    measured = [j for j in sched.jobs if j.seen is not None and j.renamed - t0 >= WARMUP]
    return RunResult(
        rate=rate,
        jobs=sched.jobs,
        measured=measured,
        renames=n,
        rename_seconds=t_end - t0,
        late=late,
        query_times=query_times,
        daemon_cpu=daemon_cpu,
        problems=problems,
        exit_code=rc,
        unseen=sum(j.seen is None for j in sched.jobs),
        delivered=delivered,
    )


def read_commit_times(dsn: str, jobs: list[Job]) -> None:
    """Commit time of each VM row's last writer (the transaction that wrote the final status)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
                "FROM db_virtualmachine WHERE id = ANY(%s)",
                ([j.vm for j in jobs],),
            )
            at = dict(cur.fetchall())
    finally:
        conn.close()
    for j in jobs:
        j.committed_wall = at.get(j.vm)


def delivery_statements(server: PgServer, dbname: str) -> tuple[int, int]:
    """(transactions, statements) of snf-watcher's delivery in *dbname*, from pg_stat_statements.

    Every delivery transaction starts with SET CONSTRAINTS ALL IMMEDIATE (syncdb.Database.apply);
    statements include BEGIN, COMMIT, SAVEPOINT and RELEASE; the poller's and this benchmark's own
    queries are left out. A string of several statements sent at once counts each."""
    with closing(server.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database()"
        )
        rows = cur.fetchall()
    ours = ("backendjobid, backendjobstatus FROM", "pg_xact_commit_timestamp", "pg_stat_statements")
    transactions = sum(calls for query, calls in rows if query.startswith("SET CONSTRAINTS ALL IMMEDIATE"))
    statements = sum(calls for query, calls in rows if not any(o in query for o in ours))
    return transactions, statements


# ---------------------------------------------------------------- reporting


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def spread(values: list[float]) -> str:
    if not values:
        return "no values"
    p50, p99 = benchlib.percentile(values, 50), benchlib.percentile(values, 99)
    return f"min {ms(min(values))}, p50 {ms(p50)}, p99 {ms(p99)}, max {ms(max(values))}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rates",
        default="200,1000",
        help="job-file versions renamed per second, comma list (default 200,1000)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="seconds of renames per run (default 15)")
    p.add_argument("--poll", type=float, default=2.0, help="poll period in ms (default 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where to make the temp dir of the outboxes (default: the system's, /tmp; on disk)",
    )
    p.add_argument(
        "--queue-tmpdir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where to make the temp dir of the job queues (default /dev/shm: see the module docstring)",
    )
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="run eventd under cProfile, stats to PREFIX-<rate>-{full,floor}.prof",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    poll = args.poll / 1000

    report = benchlib.Report("delivery_latency: job-file rename -> committed Synnefo row (eventd, fsync on)")
    root = Path(tempfile.mkdtemp(prefix="snf-bench-latency-", dir=args.tmpdir))
    queues = Path(tempfile.mkdtemp(prefix="snf-bench-latency-queues-", dir=args.queue_tmpdir))
    server = None
    results: list[tuple[RunResult, RunResult, dict, dict]] = []
    try:
        server = PgServer(fsync=True)
        with open(server.datadir / "postgresql.conf", "a") as f:
            f.write(
                "# delivery_latency.py: commit timestamps (the lower-bound cross-check) and statement\n"
                "# counts (delivery's transactions and statements)\n"
                "track_commit_timestamp = on\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
            )
        server.start()
        server.create_template()
        for i, rate in enumerate(rates):
            prof = {
                k: f"{args.profile}-{rate:g}-{k}.prof" if args.profile else None for k in ("full", "floor")
            }
            floor = one_run(
                root / f"floor-{i}",
                queues / f"floor-{i}",
                rate,
                args.seconds,
                None,
                poll,
                args.seed + i,
                prof["floor"],
            )
            dbname = server.new_database()
            n_jobs = len(floor.jobs)
            SynnefoDb(dbname, server.dsn(dbname), server).add_vms(range(FIRST_VM, FIRST_VM + n_jobs))
            with closing(server.connect(dbname)) as conn, conn.cursor() as cur:
                cur.execute("CREATE EXTENSION pg_stat_statements")
                cur.execute("SELECT pg_stat_statements_reset()")
            full = one_run(
                root / f"full-{i}",
                queues / f"full-{i}",
                rate,
                args.seconds,
                server.dsn(dbname),
                poll,
                args.seed + i,
                prof["full"],
            )
            got = benchlib.vm_job_rows(
                SynnefoDb(dbname, server.dsn(dbname), server), [j.vm for j in full.jobs]
            )
            full.transactions, full.statements = delivery_statements(server, dbname)
            want = {j.vm: j.expected_row() for j in full.jobs}
            results.append((floor, full, got, want))
    finally:
        if server is not None:
            server.destroy()
        benchlib.remove_unless_kept(root, args.keep)
        benchlib.remove_unless_kept(queues, args.keep)

    report.info(
        f"poll period {args.poll:g} ms; {len(TEMPLATE_JOBS)} recorded job kinds (startup, shutdown, reboot, "
        f"failed startup), 6 versions each, one job per VM; first {WARMUP:g} s of each run not counted"
    )
    for floor, full, got, want in results:
        rate = full.rate
        lat, floor_lat = full.latencies(), floor.latencies()
        window = max(1, round(rate * JOB_SECONDS / 6))
        report.info(f"--- {rate:,.0f} versions/s ---")
        for r, what in ((full, "with delivery"), (floor, "floor (no database)")):
            report.info(
                f"{what}: {r.renames} renames in {r.rename_seconds:.2f} s "
                f"= {r.renames / r.rename_seconds:,.0f}/s "
                f"(renames late by p99 {ms(benchlib.percentile(r.late, 99))}, max {ms(max(r.late))}); "
                f"{len(r.jobs)} jobs, ~{window} in progress at once, {len(r.measured)} measured; "
                f"eventd CPU {r.daemon_cpu:.2f} s = {100 * r.daemon_cpu / r.rename_seconds:.0f}% of a core"
            )
        if full.transactions:
            report.info(
                f"delivery: {full.delivered} messages in {full.transactions} transactions "
                f"({full.delivered / full.transactions:.1f} messages, "
                f"{full.statements / full.transactions:.1f} statements per transaction)"
            )
        report.info(f"rename -> row visible in PostgreSQL:      {spread(lat)}")
        report.info(
            f"  cross-check, rename -> commit timestamp: {spread(full.commit_latencies())} (lower bound)"
        )
        report.info(f"  commit timestamp -> first seen by the poller: {spread(full.seen_after_commit())}")
        report.info(f"  resolution: poll {args.poll:g} ms + query {spread(full.query_times)}")
        report.info(
            f"baseline, rename -> row in the outbox:     {spread(floor_lat)} (eventd alone, the floor)"
        )
        report.info(f"  resolution: poll {args.poll:g} ms + query {spread(floor.query_times)}")
        if lat and floor_lat:
            report.info(
                "ratio to the floor: p50 "
                f"{benchlib.percentile(lat, 50) / benchlib.percentile(floor_lat, 50):.2f}x, p99 "
                f"{benchlib.percentile(lat, 99) / benchlib.percentile(floor_lat, 99):.2f}x"
            )
        wrong = {vm: (got.get(vm), w) for vm, w in want.items() if got.get(vm) != w}
        for vm, (g, w) in list(wrong.items())[:5]:
            report.info(f"  WRONG ROW VM {vm}: (operstate, job, status) {g}, expected {w}")
        for r in (full, floor):
            for line in r.problems[:5]:
                report.info(f"  eventd: {line}")
        if rate == TARGET_RATE:
            p99 = benchlib.percentile(lat, 99) if lat else float("inf")
            report.target(f"p99 at {rate:,.0f}/s {ms(p99)} < {ms(TARGET_P99)}", p99 < TARGET_P99)
        report.target(
            f"{rate:,.0f}/s: every job's final status seen ({full.unseen} + {floor.unseen} never), "
            f"every VM row as its job says ({len(wrong)} wrong)",
            not full.unseen and not floor.unseen and not wrong,
        )
        report.target(
            f"{rate:,.0f}/s: eventd clean: exit codes {full.exit_code}/{floor.exit_code}, "
            f"{len(full.problems) + len(floor.problems)} warnings/errors",
            full.exit_code == 0 and floor.exit_code == 0 and not full.problems and not floor.problems,
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
