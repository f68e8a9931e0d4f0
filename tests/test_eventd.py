"""snf-ganeti-eventd as a real process on a real inotify-watched queue directory."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import SSCONF, command, job_versions, recorded_job_ids
from queue_writer import QueueWriter, final_statuses, interleaved, renumbered

from ganeti_hooks.jobqueue import advance, parse_job
from snf_watcher import spool
from snf_watcher.outbox import Outbox

ME = "node1.ganeti.test"


class Eventd:
    """The daemon under test, with its stderr collected line by line."""

    def __init__(self, config: str) -> None:
        self.config = config
        cfg = yaml.safe_load(Path(config).read_text())
        self.outbox = cfg["outbox"]["path"]
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self, wait_for: str | None = "caught up") -> Eventd:
        seen = len(self.lines)
        self.proc = subprocess.Popen(
            [command("snf-ganeti-eventd"), "--config", self.config, "--debug"],
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if wait_for:
            self.wait_log(wait_for, after=seen)
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, text: str, after: int = 0, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise AssertionError(f"eventd exited ({self.proc.returncode}):\n" + "\n".join(self.lines))
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r} within {timeout}s:\n" + "\n".join(self.lines))

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)

    def stored_keys(self) -> list[str]:
        db = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            return [k for (k,) in db.execute("SELECT key FROM outbox ORDER BY seq")]
        finally:
            db.close()

    def messages(self) -> dict[str, dict]:
        db = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            return {k: json.loads(b) for k, b in db.execute("SELECT key, body FROM outbox ORDER BY seq")}
        finally:
            db.close()


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def final_keys(jobs: dict[int, list[bytes]]) -> set[str]:
    return {f"op:{j}:{i}:{s}" for j, v in jobs.items() for i, s in enumerate(final_statuses(v))}


@pytest.fixture
def setup(tmp_path, make_config):
    config = make_config()
    ssconf = tmp_path / "ssconf"
    for f in SSCONF.iterdir():
        (ssconf / f.name).write_bytes(f.read_bytes())
    writer = QueueWriter(tmp_path / "queue")
    writer.set_serial(0)
    daemons: list[Eventd] = []

    def daemon() -> Eventd:
        d = Eventd(config)
        daemons.append(d)
        return d

    yield writer, daemon, ssconf
    for d in daemons:
        d.stop()


def test_the_recorded_queue_replayed_live_gives_each_op_status_once_with_its_recorded_content(setup):
    writer, daemon, _ = setup
    d = daemon().start()
    expected: dict[str, dict] = {}
    for job_id in recorded_job_ids():
        reported = None
        for version, data in enumerate(job_versions(job_id), 1):
            writer.write(job_id, data, version)
            progress = advance(parse_job(data), reported, "cluster.ganeti.test", [0, 0])
            reported = progress.reported
            expected.update(progress.new)
            expected.update(progress.refreshed)
    finals = {k for k in expected if k.rsplit(":", 1)[1] in ("success", "error", "canceled")}
    wait_until(lambda: finals <= set(d.stored_keys()), what="every final status")
    got = d.messages()
    for key in finals:
        assert got[key] == expected[key]
    assert set(got) <= set(expected)  # nothing a file did not say


def test_a_running_rewrite_with_a_new_log_line_refreshes_the_pending_message(setup):
    writer, daemon, _ = setup
    d = daemon().start()
    versions = job_versions(8)  # instance create: v6..v16 are "running", each with one more log line
    for v in range(1, 7):
        writer.write(8, versions[v - 1], v)
    wait_until(lambda: "op:8:0:running" in d.stored_keys())
    assert (
        d.messages()["op:8:0:running"]["logmsg"]
        == " - INFO: No-installation mode selected, disabling startup"
    )
    writer.write(8, versions[15], 16)
    last = " - INFO: Instance inst1.ganeti.test's disks are in sync"
    wait_until(lambda: d.messages()["op:8:0:running"]["logmsg"] == last, what="the refreshed log line")
    keys = d.stored_keys()
    assert keys[-1] == "op:8:0:running" and keys.count("op:8:0:running") == 1  # updated, not added


def test_a_burst_of_10000_versions_with_archiving_reports_every_final_status_exactly_once(setup):
    writer, daemon, _ = setup
    d = daemon().start()
    rng = random.Random(7)
    jobs = {}
    job_id = 100
    while sum(len(v) for v in jobs.values()) < 10000:
        job_id += 1
        jobs[job_id] = renumbered(job_id, rng.choice([8, 9, 18, 35, 27]), instance=f"snf-{job_id}")
    done = set()
    for jid, version, data in interleaved(jobs, rng):
        writer.write(jid, data, version)
        if version == len(jobs[jid]):
            done.add(jid)
            if jid % 3 == 0:  # some are archived at once, like the watcher's own jobs
                writer.archive(jid)
    consumed: list[str] = []
    box = Outbox(d.outbox)
    want = final_keys(jobs)

    def drained() -> bool:  # a consumer acks as it goes, as delivery will
        rows = box.pending(1000)
        consumed.extend(e.key for e in rows)
        box.ack(e.seq for e in rows)
        return want <= set(consumed)

    wait_until(drained, timeout=60, what="10,000 versions to be reported")
    time.sleep(0.5)
    drained()
    assert len(consumed) == len(set(consumed)), "a message was stored twice"
    assert not [k for k in consumed if k.endswith(("success", "error", "canceled")) and k not in want]


def test_jobs_written_while_the_daemon_was_down_are_caught_up_from_queue_and_archive(setup):
    writer, daemon, _ = setup
    d = daemon().start()
    first = {201: renumbered(201, 9)}
    for jid, v, data in interleaved(first, random.Random(1)):
        writer.write(jid, data, v)
    wait_until(lambda: final_keys(first) <= set(d.stored_keys()))
    d.kill(signal.SIGTERM)
    later = {jid: renumbered(jid, 9) for jid in range(202, 212)}
    for jid, v, data in interleaved(later, random.Random(2)):
        writer.write(jid, data, v)
    for jid in (203, 205, 207):
        writer.archive(jid)
    before = len(d.stored_keys())
    d.start()
    wait_until(lambda: final_keys(later) <= set(d.stored_keys()))
    assert len(d.stored_keys()) == before + len(later)  # the status each file shows now: success, once


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(setup):
    writer, daemon, _ = setup
    d = daemon().start()
    rng = random.Random(11)
    jobs = {jid: renumbered(jid, rng.choice([8, 9, 35])) for jid in range(301, 901)}
    stream = list(interleaved(jobs, rng))
    consumed: list[str] = []
    box = Outbox(d.outbox)

    def consume() -> None:
        rows = box.pending(500)
        consumed.extend(e.key for e in rows)
        box.ack(e.seq for e in rows)

    position = 0
    for _ in range(8):
        chunk = stream[position : position + len(stream) // 8 + 1]
        position += len(chunk)
        t = threading.Thread(target=lambda c=chunk: [writer.write(j, b, v) for j, v, b in c])
        t.start()
        time.sleep(rng.uniform(0.0, 0.15))
        assert d.kill(signal.SIGKILL) == -signal.SIGKILL
        t.join()
        consume()
        d.start()
        consume()
    wait_until(lambda: (consume(), final_keys(jobs) <= set(consumed))[1], timeout=60, what="all finals")
    assert len(consumed) == len(set(consumed)), "a message was stored again after it was delivered"


def test_it_produces_only_while_this_node_is_master_and_follows_failover_both_ways(setup):
    writer, daemon, ssconf = setup
    master = ssconf / "ssconf_master_node"
    master.write_text("node2.ganeti.test\n")
    d = daemon().start(wait_for="is not the master")
    a = {401: renumbered(401, 9)}
    for jid, v, data in interleaved(a, random.Random(3)):
        writer.write(jid, data, v)
    time.sleep(1.5)
    assert d.stored_keys() == []
    master.write_text(f"{ME}\n")  # failover to us: catch up from our copy of the queue
    wait_until(lambda: final_keys(a) <= set(d.stored_keys()), what="catch-up after becoming master")
    master.write_text("node2.ganeti.test\n")  # and away again
    d.wait_log("is not the master", after=len(d.lines) - 1)
    b = {402: renumbered(402, 9)}
    for jid, v, data in interleaved(b, random.Random(4)):
        writer.write(jid, data, v)
    time.sleep(1.5)
    assert not final_keys(b) & set(d.stored_keys())
    master.write_text(f"{ME}\n")
    wait_until(lambda: final_keys(b) <= set(d.stored_keys()), what="catch-up after the second failover")
    assert d.proc.poll() is None  # same process throughout


def test_a_malformed_job_file_is_logged_once_counted_and_skipped(setup, tmp_path):
    writer, daemon, _ = setup
    d = daemon().start()
    writer.write(501, b'{"id": 501, "ops": [{"input": ')
    writer.write(501, b'{"id": 501, "ops": [{"input": ')  # rewritten, still bad
    good = {502: renumbered(502, 9)}
    for jid, v, data in interleaved(good, random.Random(5)):
        writer.write(jid, data, v)
    wait_until(lambda: final_keys(good) <= set(d.stored_keys()))
    warnings = [line for line in d.lines if "job-501 skipped" in line]
    assert len(warnings) == 1 and "not JSON" in warnings[0]
    out = subprocess.run(
        [command("snf-watcher"), "--config", d.config, "outbox"], capture_output=True, text=True, timeout=30
    )
    assert "bad_job_files: 1" in out.stdout
    assert d.proc.poll() is None


def test_hook_messages_in_the_spool_reach_the_outbox_within_a_moment(setup, tmp_path):
    _, daemon, _ = setup
    d = daemon().start()
    spool.write(str(tmp_path / "spool"), {"type": "ganeti-net-status", "instance": "snf-1", "nics": []})
    wait_until(lambda: any(k.startswith("spool:") for k in d.stored_keys()), timeout=15, what="spool ingest")
    assert list((tmp_path / "spool").glob("*.msg")) == []


def test_sighup_reloads_the_config_or_keeps_the_old_one_and_sigterm_exits_cleanly(setup):
    _, daemon, _ = setup
    d = daemon().start()
    config = Path(d.config)
    good = config.read_text()
    config.write_text(good + "eventd:\n  colour: red\n")
    n = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    assert "eventd.colour: unknown key" in d.wait_log("reload refused", after=n)
    config.write_text(good)
    n = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("configuration reloaded", after=n)
    d.wait_log("caught up", after=n)
    assert d.kill(signal.SIGTERM) == 0
    assert "stopped" in d.lines[-1]


def test_a_second_daemon_on_the_same_outbox_refuses_to_start(setup):
    _, daemon, _ = setup
    first = daemon().start()
    second = daemon().start(wait_for=None)
    assert second.proc.wait(timeout=20) == 1
    time.sleep(0.2)
    assert f"another snf-ganeti-eventd (pid {first.proc.pid})" in "\n".join(second.lines)


def test_a_spool_it_cannot_watch_stops_it_with_the_reason_not_a_traceback(setup, tmp_path):
    _, daemon, _ = setup
    (tmp_path / "spool").write_text("a file where the spool directory should be\n")
    d = daemon().start(wait_for=None)
    assert d.proc.wait(timeout=20) == 1
    time.sleep(0.2)
    log = "\n".join(d.lines)
    assert f"ERROR: [Errno 17] File exists: '{tmp_path / 'spool'}'; exiting so the service manager" in log
    assert "Traceback" not in log


def test_umask_keeps_the_outbox_private(setup):
    _, daemon, _ = setup
    d = daemon().start()
    assert os.stat(d.outbox).st_mode & 0o077 == 0


def test_an_inotify_buffer_splits_into_events_and_only_final_job_names_count():
    import struct

    from ganeti_hooks.eventd import RawEvent, classify, parse_events

    def event(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name) % 16) if name else b""
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    moved_to, moved_from, overflow = 0x80, 0x40, 0x4000
    buf = (
        event(1, moved_from, b"job-10-8331-37.tmp")
        + event(1, moved_to, b"job-10")
        + event(1, moved_from, b"job-7")
        + event(2, moved_to, b"0001-0002-0003.msg")
        + event(-1, overflow, b"")
    )
    events = parse_events(buf)
    assert events[:2] == [RawEvent(1, moved_from, "job-10-8331-37.tmp"), RawEvent(1, moved_to, "job-10")]
    changes = classify(events, {"/q": 1, "/s": 2}, "/q", "/s")
    assert (changes.job_ids, changes.spool, changes.overflow) == ({10, 7}, True, True)


def test_with_a_database_configured_events_and_hook_messages_reach_it(tmp_path, make_config, synnefo_db):
    """eventd delivers by itself: a job's statuses and a hook's NIC list land in Synnefo's rows."""
    config = make_config(database={"dsn": synnefo_db.dsn, "backend_id": 1})
    for f in SSCONF.iterdir():
        (tmp_path / "ssconf" / f.name).write_bytes(f.read_bytes())
    writer = QueueWriter(tmp_path / "queue")
    writer.set_serial(0)
    d = Eventd(config).start()
    try:
        d.wait_log("delivering to")
        for version, data in enumerate(job_versions(9), 1):  # a recorded startup, of VM 102 here
            writer.write(9, data.replace(b"inst1.ganeti.test", b"snf-102"), version)
        hook = {
            "type": "ganeti-net-status",
            "instance": "snf-102",
            "event_time": [1795254549, 500000],
            "nics": [
                {
                    "name": "snf-nic-203",
                    "network": "snf-net-1",
                    "ip": "203.0.113.3",
                    "mac": "aa:00:00:77:00:01",
                }
            ],
        }
        spool.write(str(tmp_path / "spool"), hook)

        def delivered() -> bool:
            return synnefo_db.query(
                "SELECT v.operstate, v.backendjobid, v.backendjobstatus, n.mac FROM db_virtualmachine v "
                "JOIN db_networkinterface n ON n.machine_id = v.id WHERE v.id = 102"
            ) == [("STARTED", 9, "success", "aa:00:00:77:00:01")]

        wait_until(delivered, 20, "job 9 and the hook's NIC in VM 102's rows")
        wait_until(lambda: Outbox(d.outbox).pending_count() == 0, 10, "an empty outbox")
    finally:
        d.stop()
    assert d.proc.returncode == 0
