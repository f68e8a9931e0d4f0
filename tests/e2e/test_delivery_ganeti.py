"""A real Ganeti cluster's operations reach Synnefo's database rows, through a delivering eventd.

A second snf-ganeti-eventd (its own outbox, a database configured) watches
the sandbox's queue beside the session's; `gnt-instance` drives a VM (92xx)
which exists in a real PostgreSQL loaded with the Synnefo seed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from sandbox import tail, unused_ids

from e2e.conftest import WAIT
from e2e.test_ganeti_events import add_instance

if TYPE_CHECKING:
    from e2e.conftest import Watcher

pytestmark = [pytest.mark.ganeti, pytest.mark.root]


@pytest.fixture
def vm_id(snf: Watcher) -> int:
    (vm,) = unused_ids("snf-", 9200)
    return vm


@pytest.fixture
def delivering(snf: Watcher, synnefo_db, tmp_path: Path, vm_id: int):
    synnefo_db.add_vms(range(vm_id, vm_id + 1))
    synnefo_db.query("UPDATE db_virtualmachine SET operstate = 'BUILD' WHERE id = %s", (vm_id,))
    ganeti = yaml.safe_load(snf.config.read_text())["ganeti"]
    config = tmp_path / "snf-watcher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ganeti": ganeti,
                "outbox": {"path": str(tmp_path / "outbox.sqlite"), "spool_dir": str(tmp_path / "spool")},
                "logging": {"target": "stderr", "level": "DEBUG"},
                "database": {"dsn": synnefo_db.dsn, "backend_id": 1},
            }
        )
    )
    log = tmp_path / "eventd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "snf-ganeti-eventd"), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while "delivering to" not in log.read_text() or "caught up" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the delivering eventd did not start:\n{tail(log)}")
            time.sleep(0.1)
        yield log
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, tail(log)


def wait_row(db, log: Path, vm: int, expected: tuple, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        row = db.one(
            "SELECT operstate, backendjobid, backendopcode, backendjobstatus, deleted FROM db_virtualmachine "
            "WHERE id = %s",
            (vm,),
        )
        if row == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: VM {vm} is {row}, expected {expected} within {WAIT}s\n{tail(log)}")
        time.sleep(0.05)


def test_gnt_instance_operations_are_reflected_in_the_vm_row(
    snf: Watcher, delivering: Path, synnefo_db, vm_id
):
    name = f"snf-{vm_id}"
    create = add_instance(snf, name, "198.51.100.92")
    wait_row(
        synnefo_db,
        delivering,
        vm_id,
        ("STARTED", create.job_id, "OP_INSTANCE_CREATE", "success", False),
        "create",
    )
    stop = snf.gnt("gnt-instance", "shutdown", "--timeout=0", name)
    wait_row(
        synnefo_db,
        delivering,
        vm_id,
        ("STOPPED", stop.job_id, "OP_INSTANCE_SHUTDOWN", "success", False),
        "shutdown",
    )
    start = snf.gnt("gnt-instance", "startup", name)
    wait_row(
        synnefo_db,
        delivering,
        vm_id,
        ("STARTED", start.job_id, "OP_INSTANCE_STARTUP", "success", False),
        "startup",
    )
    remove = snf.gnt("gnt-instance", "remove", "-f", name)
    wait_row(
        synnefo_db,
        delivering,
        vm_id,
        ("DESTROYED", remove.job_id, "OP_INSTANCE_REMOVE", "success", True),
        "remove",
    )
