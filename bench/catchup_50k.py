#!/usr/bin/env python3
"""The daemon must stay fast with 50,000 files in the job queue.

Writes 50,000 finished job files (recorded final versions of instance/network
jobs under fresh ids 1..50000) into a temp queue, then measures the installed
snf-ganeti-eventd from process start to its "caught up" log line:

  (a) first start, fresh outbox: every file is read and reported.
      Baseline: a process of the same interpreter that lists the queue and
      reads + json.loads every file (page cache warm), start to exit.
  (b) restart, everything already reported: nothing should be read.
      Baseline: a process of the same interpreter that imports the daemon
      module and lists the queue dir with os.scandir, start to exit.

Targets: (a) within 3x of its baseline; (b) within 5x of its baseline and under 2 s.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TARGET_A_RATIO = 3.0
TARGET_B_RATIO = 5.0
TARGET_B_SECONDS = 2.0

READ_ALL = """
import json, os, sys
n = 0
with os.scandir(sys.argv[1]) as entries:
    for e in entries:
        if e.name.startswith("job-"):
            with open(e.path, "rb") as f:
                json.loads(f.read())
            n += 1
assert n == int(sys.argv[2]), n
"""

IMPORT_AND_LIST = """
import os, sys
import ganeti_hooks.eventd
n = sum(1 for _ in os.scandir(sys.argv[1]))
assert n >= int(sys.argv[2]), n
"""


def write_queue(queue: Path, n_jobs: int, seed: int) -> dict[tuple[int, int], str]:
    """*n_jobs* finished job files, ids 1..n_jobs; returns the final status expected per (job, op)."""
    templates = benchlib.load_templates()
    rng = random.Random(seed)
    expected = {}
    job_id = 1
    while job_id <= n_jobs:
        batch = templates[:]
        rng.shuffle(batch)
        for t in batch:
            if job_id > n_jobs:
                break
            (queue / f"job-{job_id}").write_bytes(benchlib.renumber(t.versions[-1], t.job_id, job_id))
            for op, status in enumerate(t.final_statuses):
                expected[(job_id, op)] = status
            job_id += 1
    (queue / "serial").write_text(f"{n_jobs}\n")
    benchlib.drop_dirty_pages()
    return expected


def timed_process(argv: list[str], runs: int) -> list[float]:
    """Wall seconds of *runs* runs of *argv*, after one untimed warm-up run."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def daemon_until_caught_up(cfg: Path, timeout: float, profile: str | None = None) -> tuple[float, str, str]:
    """Seconds from starting the daemon to its "caught up" line; the line; the whole log."""
    daemon = benchlib.Daemon(cfg, profile=profile)
    try:
        at, line, _ = daemon.wait_for_line("caught up", timeout=timeout)
        elapsed = at - daemon.started
    finally:
        rc = daemon.stop()
    log = daemon.log()
    if rc != 0 or daemon.problems():
        raise RuntimeError(f"snf-ganeti-eventd exit code {rc}, problems:\n{log}")
    return elapsed, line, log


def caught_up_figures(line: str) -> str:
    m = re.search(
        r"caught up: (\d+) job files above (-?\d+), (\d+) read, (\d+) messages added in ([\d.]+)s", line
    )
    if not m:
        return line
    return f"{m[1]} files listed, {m[3]} read, {m[4]} messages added; its own catch-up timer: {m[5]} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50_000, help="job files in the queue (default 50000)")
    p.add_argument("--restarts", type=int, default=3, help="timed restarts for (b) (default 3)")
    p.add_argument("--baseline-runs", type=int, default=3, help="timed runs of each baseline (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmpdir", help="where to make the temp dir (default: $TMPDIR or /tmp)")
    p.add_argument(
        "--profile", metavar="PREFIX", help="run the daemon under cProfile: PREFIX.first, PREFIX.restart"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    args = p.parse_args()

    interpreter = benchlib.shebang_interpreter(benchlib.command("snf-ganeti-eventd"))
    root = Path(tempfile.mkdtemp(prefix="snf-bench-catchup-", dir=args.tmpdir))
    report = benchlib.Report(
        f"catchup_{args.jobs // 1000}k: snf-ganeti-eventd with {args.jobs:,} files in the queue"
    )
    try:
        queue = root / "queue"
        queue.mkdir()
        t0 = time.perf_counter()
        expected = write_queue(queue, args.jobs, args.seed)
        setup = time.perf_counter() - t0
        cfg = benchlib.write_daemon_config(root, queue)
        n = str(args.jobs)

        # (a) baseline first: its warm-up run also warms the page cache for the daemon.
        base_a = timed_process([interpreter, "-c", READ_ALL, str(queue), n], args.baseline_runs)
        first, first_line, _ = daemon_until_caught_up(
            cfg, timeout=600, profile=args.profile and args.profile + ".first"
        )
        db = benchlib.open_outbox_ro(root / "outbox.sqlite")
        ok_rows, rows_text = benchlib.check_final_rows(benchlib.final_rows(db), expected)
        rows_after_first = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        hwm = db.execute("SELECT value FROM meta WHERE key = 'job_hwm'").fetchone()
        db.close()

        # (b) restarts with everything reported, then its baseline.
        restarts = []
        for i in range(args.restarts):
            profile = args.profile + ".restart" if args.profile and i == 0 else None
            elapsed, restart_line, _ = daemon_until_caught_up(cfg, timeout=120, profile=profile)
            restarts.append(elapsed)
        db = benchlib.open_outbox_ro(root / "outbox.sqlite")
        rows_after_restarts = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        db.close()
        base_b = timed_process([interpreter, "-c", IMPORT_AND_LIST, str(queue), n], args.baseline_runs)

        a_base = benchlib.median(base_a)
        b_base = benchlib.median(base_b)
        b = benchlib.median(restarts)
        a_ratio = first / a_base
        b_ratio = b / b_base

        report.info(
            f"queue: {args.jobs:,} finished job files ({len(expected):,} ops), written in {setup:.1f} s"
        )
        report.info(f"interpreter: {interpreter}")
        report.info(f"(a) first start:  {first:.3f} s to 'caught up'  ({args.jobs / first:,.0f} files/s)")
        report.info(f"      {caught_up_figures(first_line)}")
        report.info(
            f"    baseline read+json.loads all: {a_base:.3f} s (median of {benchlib.seconds_list(base_a)})"
        )
        report.info(f"    ratio: {a_ratio:.2f}x")
        report.info(
            f"    outbox: {rows_after_first:,} rows, high-water mark {hwm[0] if hwm else None}; {rows_text}"
        )
        report.info(
            f"(b) restart:      {b:.3f} s to 'caught up' (median of {benchlib.seconds_list(restarts)})"
        )
        report.info(f"      {caught_up_figures(restart_line)}")
        report.info(
            f"    baseline import eventd+scandir: {b_base:.3f} s (median of {benchlib.seconds_list(base_b)})"
        )
        report.info(f"    ratio: {b_ratio:.2f}x; outbox rows after the restarts: {rows_after_restarts:,}")
        report.target(
            f"(a) first start {a_ratio:.2f}x its baseline <= {TARGET_A_RATIO}x", a_ratio <= TARGET_A_RATIO
        )
        report.target(
            f"(b) restart {b_ratio:.2f}x its baseline <= {TARGET_B_RATIO}x", b_ratio <= TARGET_B_RATIO
        )
        report.target(f"(b) restart {b:.3f} s < {TARGET_B_SECONDS} s", b < TARGET_B_SECONDS)
        report.target(f"one final row per (job, op) after (a): {'yes' if ok_rows else 'NO'}", ok_rows)
        report.target(
            f"restarts added nothing: {rows_after_first:,} -> {rows_after_restarts:,} rows",
            rows_after_restarts == rows_after_first,
        )
    finally:
        benchlib.remove_unless_kept(root, args.keep)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
