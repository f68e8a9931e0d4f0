"""The outbox and its spool: durable, ordered, safe with many concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3

import pytest

from snf_watcher import spool
from snf_watcher.outbox import JobMark, JobRecord, Outbox, OutboxError


def net_status(instance: str, n: int) -> dict:
    return {"type": "ganeti-net-status", "instance": instance, "nics": [], "n": n}


def _hook_process(spool_dir: str, writer: int, count: int) -> None:
    for n in range(count):
        spool.write(spool_dir, net_status(f"snf-{writer}", n))


def test_many_concurrent_hook_processes_lose_nothing_and_keep_each_writers_order(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    box = Outbox(str(tmp_path / "outbox.sqlite"))
    procs = [multiprocessing.Process(target=_hook_process, args=(str(spool_dir), w, 100)) for w in range(16)]
    for p in procs:
        p.start()
    ingested = 0
    while any(p.is_alive() for p in procs):
        ingested += box.ingest_spool(str(spool_dir))  # ingesting while they write
    for p in procs:
        p.join()
        assert p.exitcode == 0
    ingested += box.ingest_spool(str(spool_dir))
    rows = box.pending()
    assert ingested == len(rows) == 1600
    for w in range(16):
        assert [e.message["n"] for e in rows if e.subject == f"snf-{w}"] == list(range(100))
    assert os.listdir(spool_dir) == []


def test_a_spool_file_left_behind_by_a_crash_after_commit_is_not_added_twice(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    path = spool.write(str(spool_dir), net_status("snf-1", 0))
    with open(path, "rb") as f:
        kept = f.read()
    box = Outbox(str(tmp_path / "outbox.sqlite"))
    assert box.ingest_spool(str(spool_dir)) == 1
    box.ack(e.seq for e in box.pending())  # delivered
    with open(path, "wb") as f:  # the unlink never happened
        f.write(kept)
    assert box.ingest_spool(str(spool_dir)) == 0
    assert box.pending() == [] and not os.path.exists(path)


def test_a_corrupt_spool_file_is_set_aside_counted_and_the_rest_flow(tmp_path, caplog):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spool.write(str(spool_dir), net_status("snf-1", 0))
    (spool_dir / "00000000000000000001-0000001-0000.msg").write_text("{not json")
    box = Outbox(str(tmp_path / "outbox.sqlite"))
    assert box.ingest_spool(str(spool_dir)) == 1
    assert box.counters() == {"bad_spool_files": 1}
    assert (spool_dir / ".00000000000000000001-0000001-0000.msg.bad").exists()
    assert "spool file 00000000000000000001-0000001-0000.msg skipped" in caplog.text


def test_messages_stay_until_acked_and_survive_reopening(tmp_path):
    path = str(tmp_path / "outbox.sqlite")
    box = Outbox(path)
    msg = {"type": "ganeti-op-status", "instance": "snf-7", "jobId": 1}
    rec = JobRecord(1, JobMark(reported=(4,), finished=True, received=1.0), [("op:1:0:success", msg)], [])
    assert box.store_jobs([rec], {"bad_job_files": 2}) == 1
    assert box.store_jobs([rec]) == 0  # the same key again adds nothing
    box.close()
    box = Outbox(path)
    (entry,) = box.pending()
    assert (entry.key, entry.kind, entry.subject, entry.message) == (
        "op:1:0:success",
        "ganeti-op-status",
        "snf-7",
        msg,
    )
    assert box.job_marks() == {1: JobMark(reported=(4,), finished=True, received=1.0)}
    assert box.counters() == {"bad_job_files": 2}
    box.ack([entry.seq])
    assert box.pending() == []
    box.set_high_water_mark(1)
    assert box.job_marks() == {} and box.high_water_mark() == 1


def test_an_outbox_from_a_newer_version_is_refused_with_a_clear_error(tmp_path):
    path = str(tmp_path / "outbox.sqlite")
    Outbox(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="schema version 99 is newer than this program's"):
        Outbox(path)


def test_a_file_that_is_not_an_outbox_is_refused(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.write_text("this is not a database")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(str(path))


def test_spool_names_sort_in_arrival_order():
    names = [
        spool.spool_name(t, pid, seq) for t, pid, seq in [(5, 9, 0), (10, 1, 0), (10, 1, 1), (100, 1, 0)]
    ]
    assert names == sorted(names)
    assert all(spool.is_spool_name(n) for n in names) and not spool.is_spool_name(".x.msg.tmp")


def test_spool_files_are_private_and_a_missing_spool_dir_is_made(tmp_path):
    path = spool.write(str(tmp_path / "new"), net_status("snf-1", 0))
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        assert json.loads(f.read())["instance"] == "snf-1"
