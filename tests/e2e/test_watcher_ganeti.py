"""The watcher pass on a real Ganeti cluster: crash an instance, and see what `snf-watcher` does.

The sandbox's RAPI is reached through the harness's forwarder on the host's
loopback, verified against the cluster's own /var/lib/ganeti/rapi.pem (which
names ganeti.example.com: the certificate is pinned, the host name not
checked). A crash is what the fake hypervisor shows when its runtime file is
gone: Ganeti reports ERROR_down. Each test has its own instance snf-<92xx>
and Synnefo row in a real PostgreSQL with the seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sandbox import (
    SMALL_VM,
    add_args,
    gnt,
    gnt_exe,
    instance_status,
    remove_instances,
    unused_ids,
    wait_jobs,
    wait_status,
)

from e2e.conftest import pass_config

if TYPE_CHECKING:
    from sandbox import Sandbox

    from e2e.conftest import Watcher

pytestmark = [pytest.mark.ganeti, pytest.mark.root]

# Our own prefix: the other e2e tests leave snf-90xx instances in the cluster that this
# database has no rows for, which reconciliation would rightly call orphans.
PREFIX = "snfw-"


class Cron:
    """`snf-watcher` with a config of its own, as cron would run it; and the instance it watches."""

    def __init__(self, snf: Watcher, sandbox: Sandbox, db, tmp_path: Path) -> None:
        self.sandbox, self.db = sandbox, db
        (self.vm_id,) = unused_ids(PREFIX, 9300)
        self.name = f"{PREFIX}{self.vm_id}"
        self.config = pass_config(
            snf, db.dsn, tmp_path, PREFIX, metrics_file=str(tmp_path / "snf_watcher.prom"), max_tries=2
        )
        db.seed_elsewhere()
        db.add_vms(range(self.vm_id, self.vm_id + 1))
        # The row as Synnefo would have it for the instance `add` makes (1 vCPU, 64 MiB, no disk,
        # no NIC): reconciliation, which every pass does too, finds no drift in it.
        db.add_flavor(64, 1, 64, 1)
        db.query(
            "UPDATE db_virtualmachine SET operstate = 'STARTED', flavor_id = 64, backend_id = 1 "
            "WHERE id = %s",
            (self.vm_id,),
        )

    def add(self, snf: Watcher) -> None:
        snf.gnt(*add_args(self.name, *SMALL_VM))
        snf.gnt("gnt-instance", "startup", self.name)  # --no-install: not started by add
        self.wait_status("running")

    def run(self, *args: str) -> tuple[int, dict]:
        """One pass (`--json`); its exit code and report."""
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "snf-watcher"), "--config", str(self.config), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if not proc.stdout.strip():
            pytest.fail(f"snf-watcher printed no report (exit {proc.returncode}):\n{proc.stderr}")
        return proc.returncode, json.loads(proc.stdout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "snf-watcher"), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def status(self) -> str:
        return instance_status(self.name)

    def crash(self) -> None:
        self.sandbox.crash(self.name)

    def wait_status(self, want: str) -> None:
        wait_status(self.name, want)

    def wait_job(self, job_id: int) -> str:
        """Ganeti's final status of a job the watcher submitted (it never waits for them itself)."""
        return wait_jobs([job_id])[job_id]

    def diagnostics(self) -> list[tuple[str, str]]:
        return self.db.query(
            "SELECT level, message FROM db_virtualmachinediagnostic WHERE machine_id = %s "
            "AND source = 'snf-watcher' ORDER BY id",
            (self.vm_id,),
        )

    def remove(self) -> None:
        gnt("gnt-instance", "remove", "-f", self.name, check=False)


@pytest.fixture
def cron(snf: Watcher, sandbox: Sandbox, synnefo_db, tmp_path: Path):
    remove_instances(PREFIX)  # an interrupted session's, with no row
    c = Cron(snf, sandbox, synnefo_db, tmp_path)
    c.add(snf)
    try:
        yield c
    finally:
        c.remove()


def verdicts(report: dict, instance: str) -> list[tuple[str, bool]]:
    return [(v["rule"], v["restart"]) for v in report["verdicts"] if v["instance"] == instance]


def test_a_crashed_instance_is_restarted_and_its_record_dropped(cron: Cron):
    cron.crash()
    code, report = cron.run()
    assert code == 0, json.dumps(report, indent=1)
    assert verdicts(report, cron.name) == [("restart", True)]
    job = report["jobs"][cron.name]
    assert cron.wait_job(job) == "success"
    cron.wait_status("running")
    assert cron.diagnostics() == [
        (
            "INFO",
            f"Restarted by snf-watcher: ERROR_down, VM {cron.vm_id} STARTED in Synnefo: restart, "
            f"attempt 1 of 2; Ganeti job {job}",
        )
    ]
    # the job's reason trail names us
    info = subprocess.run([gnt_exe("gnt-job"), "info", str(job)], capture_output=True, text=True, timeout=60)
    assert "snf-watcher: restart: ERROR_down" in info.stdout

    code, report = cron.run()
    assert code == 0
    assert verdicts(report, cron.name) == [("recovered", False)]
    assert cron.cli("status").stdout.startswith("0 instances with a restart record")


def test_with_starts_vetoed_it_gives_up_after_max_tries_and_says_so(cron: Cron, start_veto):
    cron.crash()
    with start_veto():
        for _ in range(2):
            code, report = cron.run()
            assert verdicts(report, cron.name) == [("restart", True)], report
            assert cron.wait_job(report["jobs"][cron.name]) == "error"
        code, report = cron.run()
    assert code == 2
    assert report["level"] == "CRITICAL"
    (v,) = [v for v in report["verdicts"] if v["instance"] == cron.name]
    assert v["rule"] == "giving-up"
    assert v["text"].startswith("ERROR_down; giving up after 2 attempts (last startup job ")
    assert v["text"].endswith(": error)")
    assert cron.status() == "ERROR_down"
    assert [level for level, _ in cron.diagnostics()] == ["INFO", "INFO", "ERROR"]
    assert "GAVE UP" in cron.cli("status").stdout
    code, report = cron.run()  # and it stays given up, without a new job
    assert code == 2 and verdicts(report, cron.name) == [("gave-up", False)] and report["jobs"] == {}


def test_a_vm_stopped_in_synnefo_is_not_restarted(cron: Cron):
    cron.db.query("UPDATE db_virtualmachine SET operstate = 'STOPPED' WHERE id = %s", (cron.vm_id,))
    cron.crash()
    code, report = cron.run()
    assert code == 0
    assert verdicts(report, cron.name) == [("owner-stopped", False)]
    assert report["jobs"] == {}
    time.sleep(2)
    assert cron.status() == "ERROR_down"


def test_a_paused_watcher_does_nothing(cron: Cron):
    assert cron.cli("pause", "--for", "10m", "--reason", "e2e maintenance").returncode == 0
    cron.crash()
    code, report = cron.run()
    assert code == 0
    assert report["summary"].startswith("paused until ") and report["summary"].endswith(": e2e maintenance")
    assert report["verdicts"] == [] and report["rapi_calls"] == 0
    time.sleep(2)
    assert cron.status() == "ERROR_down"
    assert cron.cli("resume").returncode == 0
    code, report = cron.run()
    assert verdicts(report, cron.name) == [("restart", True)]
    cron.wait_job(report["jobs"][cron.name])
