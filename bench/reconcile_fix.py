#!/usr/bin/env python3
"""Reconciliation fixes: 10,000 drifted VMs corrected through the apply engine.

`snf-watcher reconcile --fix-operstate` on a cluster where 10,000 VMs run
but Synnefo's rows say STOPPED: each finding becomes a correction message
carrying its diagnostic (`watcher.correction_message`), parsed and applied
in batches by the engine that applies events (`watcher._fix_rows`:
`events.parse`, `Database.apply`, database.batch_size per transaction).

Setup (not timed): a throwaway PostgreSQL 15 (tests/pgserver.py, fsync on)
with Synnefo's schema and seed; two databases from the template, each with
N VM rows (`SynnefoDb.add_vms`, ids from 1000, STOPPED, flavor 3, no NICs).
A synthetic /2/instances?bulk=1 answer with every one of them running and
matching its row otherwise (flavor 3's vcpus/maxmem/disk, no NIC), made into
the findings by the real code: `snapshot.ganeti`, `Database.reconcile_rows`,
`reconcile.diff` (N operstate findings, checked) and `reconcile.decide` with
operstate fixes on (N outcomes "fix").

Ours (timed): `watcher._fix_rows` for all outcomes, as a pass calls it,
connection already open.

Baseline (same run, the second database): one VM per transaction, as
Synnefo's reconcile-servers fixed an unsynced operstate: per VM `SELECT *
FROM db_virtualmachine WHERE id = %s FOR UPDATE`, the UPDATE of operstate
and updated, an INSERT of a diagnostic row (the same text: fair to ours,
which writes one), COMMIT; connection already open.

Correctness: afterwards every one of the N VMs is STARTED in both databases,
and ours has exactly one snf-watcher diagnostic per VM (the baseline one
too); every fix reported applied, none skipped or failed.

Target: ours >= 10x the baseline's VMs/s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchlib
import psycopg2

sys.path.insert(0, str(benchlib.REPO / "tests"))
from pgserver import PgServer, SynnefoDb  # noqa: E402  (tests/ is no package)

from snf_watcher import config, reconcile, snapshot, watcher  # noqa: E402
from snf_watcher.syncdb import Database  # noqa: E402

TARGET_RATIO = 10.0
FIRST_VM = 1000
BACKEND = 1
PREFIX = "snf-"
SOURCE = "snf-watcher"  # db_virtualmachinediagnostic.source of the watcher's diagnostics


# ---------------------------------------------------------------- the findings


def running_instances(ids: range, flavor: tuple[int, int, int]) -> list[dict]:
    """/2/instances?bulk=1 with these VMs running: copies of the recorded running instance."""
    body = json.loads((benchlib.FIXTURES / "rapi" / "instances-bulk.json").read_bytes())
    (base,) = [i for i in body if i["status"] == "running"]
    cpu, ram, disk = flavor
    nic_lists = {k: [] for k, v in base.items() if k.startswith("nic.") and isinstance(v, list)}
    return [
        {
            **base,
            **nic_lists,  # the rows have no NIC, nor have these
            "name": f"{PREFIX}{vm}",
            "uuid": f"00000000-0000-4000-8000-{vm:012d}",
            "beparams": {**base["beparams"], "vcpus": cpu, "maxmem": ram, "minmem": ram, "memory": ram},
            "disk.sizes": [disk * 1024],
        }
        for vm in ids
    ]


def outcomes(cfg: config.Config, ids: range, flavor: tuple[int, int, int], now: float) -> list[Any]:
    """The pass's fix decisions for these VMs, by the real snapshot, rows, diff and decide."""
    g = snapshot.ganeti(running_instances(ids, flavor), [], [])
    db = Database(cfg.database)
    try:
        rows = db.reconcile_rows(ids)
    finally:
        db.close()
    assert rows is not None
    found = reconcile.diff(g, rows, dict(g.jobs), PREFIX, datetime.fromtimestamp(now, UTC), set(ids))
    kinds = {(f.kind, f.operstate) for f in found}
    if len(found) != len(ids) or kinds != {("operstate", "STARTED")}:
        sys.exit(f"setup: {len(found)} findings of kinds {kinds}, expected {len(ids)} operstate STARTED")
    opts = reconcile.Options(fix=frozenset({"operstate"}))
    decided, _ = reconcile.decide(found, {}, {f"vm:{i}" for i in ids}, opts, now)
    if {o.action for o in decided} != {"fix"}:
        sys.exit(f"setup: actions {sorted({o.action for o in decided})}, expected fix only")
    return decided


# ---------------------------------------------------------------- runs


@dataclass
class Ours:
    seconds: float
    cpu: float
    fixed: int  # outcomes the engine applied
    other: list[str]  # texts of those it did not


def run_ours(cfg: config.Config, decided: list[Any], now: float, profile: str | None) -> Ours:
    db = Database(cfg.database)
    try:
        db.connect()  # as the baseline: the connection is open before the clock starts
        benchlib.drop_dirty_pages()
        profiler = cProfile.Profile() if profile else None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        done = watcher._fix_rows(cfg, db, decided, now)
        elapsed = time.perf_counter() - t0
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        cpu = time.process_time() - cpu0
    finally:
        db.close()
    texts = {o.finding.key: o.text for o in decided}
    other = [text for key, (_, text) in done.items() if text != texts[key]]
    return Ours(elapsed, cpu, sum(1 for key, (_, text) in done.items() if text == texts[key]), other)


def run_baseline(dsn: str, decided: list[Any], now: float) -> tuple[float, float]:
    """One transaction per VM, as Synnefo's reconcile-servers fixed an operstate; (seconds, CPU)."""
    started = datetime.fromtimestamp(now, UTC)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")  # Synnefo's Django session: TIME_ZONE = 'UTC'
        conn.commit()
        benchlib.drop_dirty_pages()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for o in decided:
            f = o.finding
            text = (
                f"Reconciled by snf-watcher: {f.kind}: Ganeti says {f.ganeti}, the database said {f.database}"
            )
            text += f"; {f.fix}"
            with conn.cursor() as cur:
                cur.execute("SELECT * FROM db_virtualmachine WHERE id = %s FOR UPDATE", (f.id,))
                if cur.fetchone() is None:
                    sys.exit(f"baseline: no VM {f.id}")
                cur.execute(
                    "UPDATE db_virtualmachine SET operstate = %s, updated = %s WHERE id = %s",
                    (f.operstate, datetime.now(UTC), f.id),
                )
                cur.execute(
                    "INSERT INTO db_virtualmachinediagnostic (created, level, source, source_date, message, "
                    "details, machine_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (datetime.now(UTC), "INFO", SOURCE, started, text[:255], text, f.id),
                )
            conn.commit()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        conn.close()
    return elapsed, cpu


def check(db: SynnefoDb, ids: range) -> tuple[int, int, int]:
    """(VMs STARTED, VMs with exactly one snf-watcher diagnostic, snf-watcher diagnostics) among *ids*."""
    (started,) = db.one(
        "SELECT count(*) FROM db_virtualmachine WHERE id BETWEEN %s AND %s AND operstate = 'STARTED'",
        (ids.start, ids.stop - 1),
    )
    counts = db.query(
        "SELECT machine_id, count(*) FROM db_virtualmachinediagnostic "
        "WHERE machine_id BETWEEN %s AND %s AND source = %s GROUP BY machine_id",
        (ids.start, ids.stop - 1, SOURCE),
    )
    db.close()
    return started, sum(1 for _, c in counts if c == 1), sum(c for _, c in counts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=10_000, help="drifted VMs fixed (default 10000)")
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where the spool dir and the outbox go (default: the system's temp dir)",
    )
    p.add_argument("--profile", metavar="FILE", help="run our timed section under cProfile, stats to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (outbox) for inspection")
    args = p.parse_args()
    n = args.vms
    ids = range(FIRST_VM, FIRST_VM + n)

    report_ = benchlib.Report(
        "reconcile_fix: operstate corrections -> the apply engine -> Synnefo (fsync on)"
    )
    root = Path(tempfile.mkdtemp(prefix="snf-bench-fix-", dir=args.tmpdir))
    server = None
    try:
        server = PgServer(fsync=True)
        server.start()
        server.create_template()
        ours_db, base_db = server.new_database(), server.new_database()
        dbs = {name: SynnefoDb(name, server.dsn(name), server) for name in (ours_db, base_db)}
        for db in dbs.values():
            db.add_vms(ids)
        flavor = dbs[ours_db].one(
            "SELECT f.cpu, f.ram, f.disk FROM db_virtualmachine v JOIN db_flavor f ON f.id = v.flavor_id "
            "WHERE v.id = %s",
            (FIRST_VM,),
        )
        cfg = config.from_mapping(
            {
                "outbox": {"path": str(root / "outbox.sqlite"), "spool_dir": str(root / "spool")},
                "database": {"dsn": server.dsn(ours_db), "backend_id": BACKEND},
            }
        )
        now = time.time()
        decided = outcomes(cfg, ids, flavor, now)

        ours = run_ours(cfg, decided, now, args.profile)
        base_seconds, base_cpu = run_baseline(server.dsn(base_db), decided, now)
        ours_check, base_check = (check(dbs[name], ids) for name in (ours_db, base_db))
    finally:
        if server is not None:
            server.destroy()
        benchlib.remove_unless_kept(root, args.keep)

    ours_rate, base_rate = n / ours.seconds, n / base_seconds
    ratio = ours_rate / base_rate
    report_.info(
        f"VMs: {n} STOPPED rows that Ganeti runs (operstate findings by reconcile.diff, all to fix); "
        "PostgreSQL 15, fsync on"
    )
    report_.info(
        f"ours:     {ours.seconds:.3f} s = {ours_rate:,.0f} VMs/s  (watcher._fix_rows: {n} corrections, "
        f"batch_size {cfg.database.batch_size}; {1e6 * ours.seconds / n:.0f} us per VM; "
        f"our CPU {ours.cpu:.2f} s)"
    )
    report_.info(
        f"baseline: {base_seconds:.3f} s = {base_rate:,.0f} VMs/s  (one transaction per VM: "
        f"SELECT FOR UPDATE, UPDATE, INSERT diagnostic, COMMIT; {1e3 * base_seconds / n:.2f} ms per VM; "
        f"client CPU {base_cpu:.2f} s)"
    )
    report_.info(f"ratio ours/baseline: {ratio:.2f}x")
    if args.profile:
        report_.info(f"profile of our timed section: {args.profile}")
    report_.target(
        f"throughput ratio {ratio:.2f}x >= {TARGET_RATIO:.0f}x the baseline", ratio >= TARGET_RATIO
    )
    for label, (started, _, _) in (("ours", ours_check), ("baseline", base_check)):
        report_.target(f"{label}: {started} of {n} VMs STARTED afterwards", started == n)
    started, one, total = ours_check
    report_.target(
        f"ours: {one} of {n} VMs with exactly one snf-watcher diagnostic ({total} in all)",
        one == n and total == n,
    )
    report_.target(
        f"ours: {ours.fixed} of {n} fixes applied; not applied: {ours.other[:3] or 'none'}",
        ours.fixed == n and not ours.other,
    )
    code = report_.finish()
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)
    return code


if __name__ == "__main__":
    sys.exit(main())
