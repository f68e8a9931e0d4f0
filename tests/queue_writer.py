"""Write a Ganeti job queue directory exactly the way Ganeti 3.0 does.

Both of Ganeti's writers replace `job-<id>` by rename: luxid from
`job-<id>-<pid>-<n>.tmp`, the job process from `job-<id><random>.new`.
Archiving is a rename into `archive/<id // 10000>/`. Used by the tests and
the benchmarks to drive the real daemon through real inotify.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Iterator
from pathlib import Path

from conftest import job_versions

JOBS_PER_ARCHIVE_DIR = 10000


class QueueWriter:
    def __init__(self, queue_dir: str | Path, fsync: bool = False) -> None:
        self.dir = Path(queue_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.counter = 0
        self.rng = random.Random(4242)

    def temp_name(self, job_id: int, version: int) -> str:
        self.counter += 1
        if version <= 3:  # luxid writes the queued versions
            return f"job-{job_id}-{os.getpid()}-{self.counter}.tmp"
        suffix = "".join(self.rng.choices(string.ascii_lowercase + string.digits, k=8))
        return f"job-{job_id}{suffix}.new"

    def write(self, job_id: int, data: bytes, version: int = 4) -> None:
        """One new version of job-<id>: temp file, optional fsync, rename over the job file."""
        tmp = self.dir / self.temp_name(job_id, version)
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, self.dir / f"job-{job_id}")

    def archive(self, job_id: int) -> None:
        sub = self.dir / "archive" / str(job_id // JOBS_PER_ARCHIVE_DIR)
        sub.mkdir(parents=True, exist_ok=True)
        os.rename(self.dir / f"job-{job_id}", sub / f"job-{job_id}")

    def set_serial(self, last_id: int) -> None:
        (self.dir / "serial").write_text(f"{last_id}\n")


def renumbered(job_id: int, template: int, instance: str | None = None) -> list[bytes]:
    """The recorded versions of job *template*, as if they were job *job_id* (on *instance*)."""
    out = []
    for data in job_versions(template):
        doc = json.loads(data)
        doc["id"] = job_id
        for op in doc["ops"]:
            if instance and "instance_name" in op["input"]:
                op["input"]["instance_name"] = instance
        out.append(json.dumps(doc).encode())
    return out


def final_statuses(versions: list[bytes]) -> list[str]:
    return [op["status"] for op in json.loads(versions[-1])["ops"]]


def interleaved(jobs: dict[int, list[bytes]], rng: random.Random) -> Iterator[tuple[int, int, bytes]]:
    """(job id, version number, bytes) of several jobs running at once, each job's versions in order."""
    cursors = {job_id: 0 for job_id in jobs}
    while cursors:
        job_id = rng.choice(sorted(cursors))
        i = cursors[job_id]
        yield job_id, i + 1, jobs[job_id][i]
        if i + 1 == len(jobs[job_id]):
            del cursors[job_id]
        else:
            cursors[job_id] = i + 1
