"""Faults: the delivering process killed at random moments, the database stopped mid-stream."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import time

import pytest
from conftest import command
from pgserver import PgServer, SynnefoDb
from streams import busy_cluster, store

from snf_watcher import config
from snf_watcher.delivery import DeliveryThread
from snf_watcher.outbox import Outbox
from snf_watcher.syncdb import safe_dsn


def pending(cfg: config.Config) -> int:
    box = Outbox(cfg.outbox.path)
    try:
        return box.pending_count()
    finally:
        box.close()


def expect_final_states(db, vm_ids: list[int], jobs_per_vm: int, first_job: int) -> None:
    """Each VM's last job ran: a startup for an odd number of jobs, a shutdown for an even one."""
    rows = db.query(
        "SELECT id, operstate, backendjobid, backendjobstatus FROM db_virtualmachine "
        "WHERE id = ANY(%s) ORDER BY id",
        (vm_ids,),
    )
    state = "STARTED" if jobs_per_vm % 2 else "STOPPED"
    last = first_job + (jobs_per_vm - 1) * len(vm_ids)
    assert rows == [(vm_id, state, last + i, "success") for i, vm_id in enumerate(vm_ids)]


def test_sigkill_of_the_deliverer_at_random_moments_loses_and_doubles_nothing(make_config, synnefo_db):
    vm_ids = list(range(1000, 1200))
    synnefo_db.add_vms(range(1000, 1200))
    stream = busy_cluster(vm_ids, jobs_per_vm=6)
    diagnostics = [
        {
            "type": "image-info",
            "instance": f"snf-{vm_id}",
            "event_time": [1_800_000_000, vm_id],
            "messages": ["hi"],
        }
        for vm_id in vm_ids[:50]
    ]
    path = make_config(database={"dsn": synnefo_db.dsn, "backend_id": 1, "batch_size": 50})
    cfg = config.load(path)
    store(cfg.outbox.path, cfg.outbox.spool_dir, stream + diagnostics)
    total = len(stream) + len(diagnostics)
    assert pending(cfg) == total
    env = {**os.environ, "SNF_WATCHER_CONFIG": path}
    rng = random.Random(1234)
    # kill points: after a random share of the stream, plus a random few ms, so kills land inside
    # database transactions, between a commit and the outbox acknowledging it, and everywhere else
    thresholds = sorted((rng.randrange(total // 10, total) for _ in range(8)), reverse=True)
    interrupted = []
    for threshold in thresholds:
        proc = subprocess.Popen([command("snf-watcher"), "deliver"], env=env, stdout=subprocess.DEVNULL)
        while proc.poll() is None and pending(cfg) > threshold:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            interrupted.append(pending(cfg))
    assert sum(0 < left < total for left in interrupted) >= 4, f"kills did not land mid-stream: {interrupted}"
    done = subprocess.run([command("snf-watcher"), "deliver"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pending(cfg) == 0
    expect_final_states(synnefo_db, vm_ids, 6, 1000)
    # each diagnostic written once, however often its batch was cut short and redelivered
    assert synnefo_db.one(
        "SELECT count(*), count(DISTINCT machine_id) FROM db_virtualmachinediagnostic "
        "WHERE machine_id >= 1000"
    ) == (50, 50)
    box = Outbox(cfg.outbox.path)
    assert box.dead_count() == 0
    box.close()


@pytest.fixture
def own_server():
    """A server of this test's own, which it may stop and start."""
    server = PgServer(fsync=False)
    try:
        server.start()
        server.create_template()
        yield server
    finally:
        server.destroy()


def test_database_stopped_mid_stream_then_back_every_message_applied(own_server, make_config, caplog):
    name = own_server.new_database()
    db = SynnefoDb(name=name, dsn=own_server.dsn(name), server=own_server)
    vm_ids = list(range(1000, 1250))
    db.add_vms(range(1000, 1250))
    stream = busy_cluster(vm_ids, jobs_per_vm=5)
    assert len(stream) == 5000
    cfg = config.load(
        make_config(
            database={
                "dsn": own_server.dsn(name),
                "backend_id": 1,
                "batch_size": 100,
                "max_retry_interval": 1,
            }
        )
    )
    thread = DeliveryThread(cfg)
    caplog.set_level(logging.INFO, logger="snf-watcher.delivery")
    thread.start()
    try:
        chunks = [stream[i : i + 250] for i in range(0, len(stream), 250)]
        for n, chunk in enumerate(chunks):
            store(cfg.outbox.path, cfg.outbox.spool_dir, chunk)
            thread.wake.set()
            if n == 6:  # 1,750 messages in: the database goes away while the stream goes on
                wait_until(lambda: pending(cfg) == 0, 30)
                db.close()
                own_server.stop("immediate")
            if n == 14:
                time.sleep(3)  # several failed attempts, with backoff
                assert pending(cfg) > 0
                own_server.start()
            time.sleep(0.05)
        wait_until(lambda: pending(cfg) == 0, 60)
    finally:
        thread.stop()
        thread.join(10)
    assert thread.failed is None
    expect_final_states(db, vm_ids, 5, 1000)
    lines = [r.getMessage() for r in caplog.records if r.name == "snf-watcher.delivery"]
    down = [line for line in lines if line.startswith("database unavailable")]
    up = [line for line in lines if line.startswith("database available again")]
    assert len(down) == 1 and len(up) == 1, lines  # one line each, no flood
    assert "messages wait in the outbox, retrying with backoff" in down[0]
    db.close()


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.05)


def test_a_down_database_is_reported_with_the_password_left_out(make_config, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-password\n")
    path = make_config(
        database={
            "dsn": f"host={tmp_path} port=1 dbname=cyclades user=cyclades",
            "password_file": str(secret),
            "backend_id": 1,
            "connect_timeout": 2,
        }
    )
    r = subprocess.run(
        [command("snf-watcher"), "deliver"],
        env={**os.environ, "SNF_WATCHER_CONFIG": path},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert (
        first.startswith("snf-watcher: database ")
        and "dbname=cyclades" in first
        and f"host={tmp_path}" in first
    )
    assert "Is the server running" in first  # libpq's own reason
    assert "messages wait in the outbox" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout
    assert sorted(safe_dsn("host=db password=s3cret user=u").split()) == ["host=db", "user=u"]
