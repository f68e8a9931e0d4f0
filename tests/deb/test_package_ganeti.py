"""The installed package on the real Ganeti sandbox cluster, configured as docs/guide.md says:
events from Ganeti reach the database through the installed hook and eventd, and the
installed cron entry restarts a crashed instance. Nothing here runs from the source tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sandbox import (
    CLUSTER,
    GANETI_DIR,
    NODE,
    QUEUE_DIR,
    RAPI_PASSWORD,
    RAPI_PORT,
    RAPI_USER,
    SMALL_VM,
    Sandbox,
    add_args,
    gnt,
    instance_status,
    job_id_from_output,
    remove_instances,
    unused_ids,
)

from deb.conftest import APT_ENV, Build
from deb.test_package import CONFIG, LOG_DIR, STATE_DIR, run_as_cron, unit_file

pytestmark = [pytest.mark.package, pytest.mark.root, pytest.mark.ganeti]

PREFIX = "snfd-"  # this module's instances; the other e2e tests' are not in this database
RAPI_SECRET = Path("/etc/synnefo/snf-watcher.rapi-password")
WAIT = 30.0


@dataclass
class Node:
    """The installed package, configured for the sandbox, and the VM this test plays with."""

    db: object
    sandbox: Sandbox
    vm_id: int
    stderr: Path
    eventd: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.vm_id}"

    def row(self) -> dict:
        ((row,),) = self.db.query(
            "SELECT row_to_json(v) FROM db_virtualmachine v WHERE id = %s", (self.vm_id,)
        )
        return row

    def start_eventd(self) -> None:
        """As systemd runs the unit: its ExecStart, a bare environment, no --config."""
        exec_start = unit_file()["Service"]["ExecStart"]
        log = open(self.stderr, "ab")  # noqa: SIM115 -- the daemon's, kept apart from the package's log dir
        self.eventd = subprocess.Popen(exec_start.split(), env=dict(APT_ENV), stdout=log, stderr=log)

    def instance_status(self) -> str:
        return instance_status(self.name)

    def wait_for(self, what: str, check, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while not (got := check()):
            if time.monotonic() > deadline:
                stderr = self.stderr.read_text()[-2000:] if self.stderr.exists() else ""
                pytest.fail(f"{what}: not within {timeout:.0f}s ({got!r}); logs:\n{self.log()}\n{stderr}")
            time.sleep(0.2)
        return got

    def log(self, program: str = "snf-ganeti-eventd") -> str:
        path = LOG_DIR / f"{program}.log"
        return path.read_text()[-3000:] if path.exists() else f"<no {path}>"


def configure(db) -> None:
    """The guide's steps: edit the installed config (appended to the shipped, all-comment file)."""
    RAPI_SECRET.write_text(RAPI_PASSWORD + "\n")
    RAPI_SECRET.chmod(0o600)
    settings = {
        "ganeti": {"node_name": NODE},  # eventd runs in the host's namespace, whose name is not the node's
        "logging": {"target": "file", "level": "DEBUG"},
        "database": {"dsn": db.dsn, "backend_id": 1},
        "rapi": {
            "url": f"https://127.0.0.1:{RAPI_PORT}",
            "user": RAPI_USER,
            "password_file": str(RAPI_SECRET),
        },
        "watcher": {"metrics_file": None, "max_tries": 2},
        "instance_prefix": PREFIX,
    }
    CONFIG.write_text(CONFIG.read_text() + "\n" + yaml.safe_dump(settings))


@pytest.fixture
def node(installed: Build, sandbox: Sandbox, synnefo_db, tmp_path: Path) -> Iterator[Node]:
    remove_instances(PREFIX)
    synnefo_db.seed_elsewhere()
    synnefo_db.query("UPDATE db_backend SET clustername = %s WHERE id = 1", (CLUSTER,))
    synnefo_db.add_flavor(64, 1, 64, 1)
    (vm_id,) = unused_ids(PREFIX, 9500)
    synnefo_db.add_vms(range(vm_id, vm_id + 1))
    synnefo_db.query(
        "UPDATE db_virtualmachine SET operstate = 'BUILD', flavor_id = 64, backend_id = 1 WHERE id = %s",
        (vm_id,),
    )
    configure(synnefo_db)
    n = Node(db=synnefo_db, sandbox=sandbox, vm_id=vm_id, stderr=tmp_path / "eventd.stderr")
    try:
        yield n
    finally:
        if n.eventd is not None:
            n.eventd.send_signal(signal.SIGTERM)
            n.eventd.wait(timeout=30)
        remove_instances(PREFIX)
        RAPI_SECRET.unlink(missing_ok=True)


def add_instance(name: str) -> int:
    """`gnt-instance add` as Synnefo's create would (diskless, no OS install, no NIC); its job id."""
    done = gnt(*add_args(name, *SMALL_VM, "--submit"))
    job = job_id_from_output(done.stdout + done.stderr)
    assert job is not None, done.stdout + done.stderr
    return job


def spooled(name: str) -> list[dict]:
    return [
        m
        for m in (json.loads(p.read_bytes()) for p in (STATE_DIR / "spool").glob("*.msg"))
        if m.get("instance") == name
    ]


def test_check_config_passes_and_an_instance_operation_reaches_the_database(node: Node):
    checked = subprocess.run(
        ["/usr/bin/snf-watcher", "check-config"], env=APT_ENV, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == f"{CONFIG}: OK, 0 problems"

    # eventd not yet running: the installed hook's message waits in the spool
    create = add_instance(node.name)
    node.wait_for(f"job {create} to end", lambda: node.instance_status() != "gone")
    nets = node.wait_for("the hook's message in the spool", lambda: spooled(node.name))
    assert [(m["type"], m["hook"], m["nics"]) for m in nets] == [("ganeti-net-status", "instance-add", [])]

    node.start_eventd()
    node.wait_for(
        "the create job's success in the database",
        lambda: (r := node.row())["backendjobid"] == create and r["backendjobstatus"] == "success" and r,
    )
    assert node.row()["operstate"] == "STARTED"  # Synnefo's rule for a successful create
    node.wait_for("the spool emptied into the outbox", lambda: not spooled(node.name))

    started = gnt("gnt-instance", "startup", node.name)  # says "Waiting for job <id> ..."
    startup = job_id_from_output(started.stdout + started.stderr)
    assert startup is not None, started.stdout + started.stderr
    row = node.wait_for(
        "the startup job's success in the database",
        lambda: (r := node.row())["backendjobid"] == startup and r["backendjobstatus"] == "success" and r,
    )
    assert (row["backendopcode"], row["operstate"]) == ("OP_INSTANCE_STARTUP", "STARTED")
    log = (LOG_DIR / "snf-ganeti-eventd.log").read_text()
    assert f"INFO: this node ({NODE}) is the master of {CLUSTER}: producing events" in log
    assert os.path.isdir(QUEUE_DIR) and os.path.exists(f"{GANETI_DIR}/rapi.pem")


def test_the_installed_cron_entry_restarts_a_crashed_instance(node: Node):
    gnt(*add_args(node.name, *SMALL_VM))
    gnt("gnt-instance", "startup", node.name)
    node.db.query("UPDATE db_virtualmachine SET operstate = 'STARTED' WHERE id = %s", (node.vm_id,))
    node.sandbox.crash(node.name)

    done = run_as_cron(timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")

    node.wait_for("the instance running again", lambda: node.instance_status() == "running", timeout=120)
    ((level, message),) = node.db.query(
        "SELECT level, message FROM db_virtualmachinediagnostic "
        "WHERE machine_id = %s AND source = 'snf-watcher'",
        (node.vm_id,),
    )
    assert level == "INFO"
    assert message.startswith(
        f"Restarted by snf-watcher: ERROR_down, VM {node.vm_id} STARTED in Synnefo: restart"
    )
    log = node.log("snf-watcher")
    assert f"INFO: {node.name}: restart: ERROR_down, VM {node.vm_id} STARTED in Synnefo" in log, log
    status = subprocess.run(["/usr/bin/snf-watcher", "status"], env=APT_ENV, capture_output=True, text=True)
    assert status.stdout.startswith(f"1 instances with a restart record in {STATE_DIR}/state.json\n")
