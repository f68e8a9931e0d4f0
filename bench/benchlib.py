"""Shared helpers for the benchmarks in bench/ (not a benchmark itself).

The benchmarks run the *installed* commands (snf-ganeti-eventd, snf-ganeti-hook)
found beside the interpreter that runs the benchmark, else on PATH, the way the
tests do. Job files come from the real Ganeti 3.0.2 recordings in
tests/fixtures/ganeti-3.0.2, renumbered to fresh job ids. Nothing here imports
the project: what a run is expected to produce is worked out from the recorded
JSON itself, so the correctness checks do not share code with the daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "ganeti-3.0.2"
QUEUE_FIXTURES = FIXTURES / "queue"
HOOK_FIXTURES = FIXTURES / "hooks"
MASTER = (FIXTURES / "ssconf" / "ssconf_master_node").read_text().strip()
CLUSTER = (FIXTURES / "ssconf" / "ssconf_cluster_name").read_text().strip()
FINAL = ("success", "error", "canceled")
# Ops the daemon reports: those acting on one instance or one network (jobqueue.instance_of /
# network_of). Templates are limited to jobs made only of these, so every op of every
# benchmark job must end with exactly one final row in the outbox.
REPORTED_OP = re.compile(r"OP_(INSTANCE|NETWORK)_")


# ---------------------------------------------------------------- commands


def command(name: str) -> str:
    """The installed command *name*: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    sys.exit(
        f"{name} is not installed beside {sys.executable} nor on PATH: run this benchmark with the "
        "interpreter of the environment the project is installed in (pip install -e .)"
    )


def shebang_interpreter(script: str) -> str:
    """The interpreter a console script runs under (its #! line)."""
    with open(script, "rb") as f:
        first = f.readline().decode().strip()
    if not first.startswith("#!"):
        sys.exit(f"{script} has no #! line")
    return first[2:].split()[0]


# ---------------------------------------------------------------- recorded jobs


@dataclass(frozen=True)
class Template:
    """One recorded job: every version Ganeti renamed into place, in order."""

    job_id: int
    versions: tuple[bytes, ...]
    writers: tuple[str, ...]  # "luxid" or "job-process", per version
    final_statuses: tuple[str, ...]  # per op, in the last version


def load_templates() -> list[Template]:
    """Recorded jobs with every version on disk whose every op is reported and ends final."""
    rows = [line.rstrip("\n").split("\t") for line in (QUEUE_FIXTURES / "INDEX.tsv").open()][1:]
    by_job: dict[int, list[tuple[int, str, str]]] = {}
    for name, job_id, version, _statuses, writer, *_ in rows:
        by_job.setdefault(int(job_id), []).append((int(version), name, writer))
    templates = []
    for job_id, versions in sorted(by_job.items()):
        versions.sort()
        paths = [QUEUE_FIXTURES / name for _, name, _ in versions]
        if [v for v, _, _ in versions] != list(range(1, len(versions) + 1)):
            continue
        if not all(p.exists() for p in paths):
            continue  # INDEX.tsv lists a few versions that were not kept
        data = [p.read_bytes() for p in paths]
        last = json.loads(data[-1])
        ops = last["ops"]
        if not all(REPORTED_OP.match(op["input"]["OP_ID"]) for op in ops):
            continue
        statuses = tuple(op["status"] for op in ops)
        if not all(s in FINAL for s in statuses):
            continue
        templates.append(Template(job_id, tuple(data), tuple(w for _, _, w in versions), statuses))
    if not templates:
        sys.exit(f"no usable recorded jobs under {QUEUE_FIXTURES}")
    return templates


def renumber(data: bytes, old: int, new: int) -> bytes:
    """A job file's bytes with job id *old* replaced by *new* wherever Ganeti writes it."""
    out, n = re.subn(rb'^\{"id": ?%d,' % old, b'{"id": %d,' % new, data)  # luxid writes it compact
    if n != 1:
        raise ValueError(f"job {old}: no leading id field")
    out = out.replace(b"job=%d;" % old, b"job=%d;" % new)  # opcode reason trail
    out = out.replace(b"job_%06d_" % old, b"job_%06d_" % new)  # livelock path
    doc = json.loads(out)
    assert doc["id"] == new, (old, new)
    return out


# ---------------------------------------------------------------- daemon


def write_daemon_config(root: Path, queue_dir: Path) -> Path:
    """ssconf saying this node is the master, and an eventd config for a temp outbox."""
    ssconf = root / "ssconf"
    ssconf.mkdir(exist_ok=True)
    (ssconf / "ssconf_master_node").write_text(MASTER + "\n")
    (ssconf / "ssconf_cluster_name").write_text(CLUSTER + "\n")
    cfg = root / "snf-watcher.yaml"
    cfg.write_text(
        "ganeti:\n"
        f"  queue_dir: {json.dumps(str(queue_dir))}\n"
        f"  ssconf_dir: {json.dumps(str(ssconf))}\n"
        f"  node_name: {json.dumps(MASTER)}\n"
        "outbox:\n"
        f"  path: {json.dumps(str(root / 'outbox.sqlite'))}\n"
        f"  spool_dir: {json.dumps(str(root / 'spool'))}\n"
        "logging:\n"
        "  target: stderr\n"
    )
    return cfg


class Daemon:
    """snf-ganeti-eventd in the background, its stderr lines timestamped as they arrive."""

    def __init__(self, config: Path, profile: str | None = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        argv = [command("snf-ganeti-eventd"), "--config", str(config)]
        if profile:  # the same script under cProfile; the stats are written when it stops
            argv = [shebang_interpreter(argv[0]), "-m", "cProfile", "-o", profile, *argv]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            now = time.perf_counter()
            with self._cond:
                self.lines.append((now, raw.decode(errors="replace").rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, needle: str, timeout: float, after: int = 0) -> tuple[float, str, int]:
        """(arrival time, line, index) of the first stderr line from *after* on containing *needle*."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.lines)):
                    if needle in self.lines[i][1]:
                        return self.lines[i][0], self.lines[i][1], i
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"snf-ganeti-eventd exited ({self.proc.returncode}):\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {needle!r} from snf-ganeti-eventd in {timeout}s:\n{self.log()}")
                self._cond.wait(min(left, 0.05))

    def log(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def problems(self) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines if ": WARNING: " in line or ": ERROR: " in line]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def open_outbox_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)


def final_rows(db: sqlite3.Connection) -> list[tuple[int, int, str]]:
    """(job, op, status) of every final op-status row in the outbox."""
    rows = []
    for (key,) in db.execute("SELECT key FROM outbox WHERE key LIKE 'op:%'"):
        _, job, op, status = key.split(":")
        if status in FINAL:
            rows.append((int(job), int(op), status))
    return rows


def check_final_rows(
    rows: list[tuple[int, int, str]], expected: dict[tuple[int, int], str]
) -> tuple[bool, str]:
    """Exactly one final row per expected (job, op), with the recorded status, and nothing else."""
    seen: dict[tuple[int, int], list[str]] = {}
    for job, op, status in rows:
        seen.setdefault((job, op), []).append(status)
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    wrong = {k: v for k, v in seen.items() if k in expected and v[0] != expected[k] and len(v) == 1}
    missing = [k for k in expected if k not in seen]
    extra = [k for k in seen if k not in expected]
    ok = not (dup or wrong or missing or extra)
    text = (
        f"{len(expected)} (job, op) expected, {len(seen)} with a final row; "
        f"duplicates {len(dup)}, wrong status {len(wrong)}, missing {len(missing)}, unexpected {len(extra)}"
    )
    if not ok:
        text += f"; e.g. dup {list(dup.items())[:3]} wrong {list(wrong.items())[:3]} missing {missing[:3]}"
    return ok, text


# ---------------------------------------------------------------- timing and reporting


def vm_job_rows(db: Any, vm_ids: list[int]) -> dict[int, tuple[str, int, str]]:
    """(operstate, backendjobid, backendjobstatus) of these VMs in a tests/pgserver.py SynnefoDb."""
    rows = db.query(
        "SELECT id, operstate, backendjobid, backendjobstatus FROM db_virtualmachine WHERE id = ANY(%s)",
        (vm_ids,),
    )
    db.close()
    return {vm: (oper, job, status) for vm, oper, job, status in rows}


def remove_unless_kept(root: Path, keep: bool) -> None:
    """Remove a benchmark's temp dir, or say where it is when --keep asked for it."""
    if keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


def run_wall(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, bytes]:
    """Wall seconds, exit code and stderr of one run of *argv*."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def seconds_list(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def drop_dirty_pages() -> None:
    """Write everything out first, so writeback of the setup does not land in a timed phase."""
    os.sync()


@dataclass
class Report:
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def info(self, text: str) -> None:
        self.lines.append(text)

    def target(self, text: str, ok: bool) -> None:
        self.checks.append((text, ok))

    def finish(self) -> int:
        print()
        print(f"== {self.title} ==")
        for line in self.lines:
            print(f"  {line}")
        for text, ok in self.checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {text}")
        failed = [text for text, ok in self.checks if not ok]
        print(f"  result: {'PASS' if not failed else f'FAIL ({len(failed)} of {len(self.checks)} missed)'}")
        sys.stdout.flush()
        return 1 if failed else 0
