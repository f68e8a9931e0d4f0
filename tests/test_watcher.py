"""The cron pass, as the installed `snf-watcher` command, against a fake HTTPS ganeti-rapi
(tests/rapi_server.py, recorded Ganeti 3.0.2 answers) and a real PostgreSQL with the Synnefo seed.

Seed: VM 101 STARTED, 102 STOPPED. The recorded cluster's inst3 (ERROR_down) is renamed
snf-101 and inst2 snf-102, the way Synnefo names its instances.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import command
from watcher_pass import INSTANCES, JOBS, STARTUP_101, instances, job

from snf_watcher import report, state


def pass_json(watch, *args: str) -> tuple[int, dict]:
    code, out, err = watch("--json", *args)
    assert out, err
    return code, json.loads(out)


def diagnostics(db, vm_id: int) -> list[tuple]:
    return db.query(
        "SELECT level, source, message FROM db_virtualmachinediagnostic WHERE machine_id = %s AND "
        "source = 'snf-watcher' ORDER BY id",
        (vm_id,),
    )


def test_a_crashed_vm_is_restarted_and_forgotten_once_it_runs(watch, rapi_server, synnefo_db):
    rapi_server.set_body(STARTUP_101, 77, method="PUT")
    code, out, err = watch()
    assert code == 0, out + err
    assert out.splitlines()[0] == (
        "snf-watcher OK: 5 instances (1 ADMIN_down, 1 ADMIN_offline, 1 ERROR_down, 1 ERROR_up, 1 running); "
        "submitted 1 restarts; reconciled 1 VMs, 2 networks, 2 IP pools: no drift; "
        f"delivered 1 events ({out.split('events (')[1].split(',')[0]}, 7 RAPI calls)"
    )
    assert out.splitlines()[1] == (
        "  OK       snf-101 [restart] ERROR_down, VM 101 STARTED in Synnefo: restart, attempt 1 of 2"
        " -> job 77"
    )
    (put,) = rapi_server.seen(STARTUP_101, "PUT")
    assert put.user == "rapiadmin"
    assert put.query["reason"] == [
        "snf-watcher: restart: ERROR_down, VM 101 STARTED in Synnefo: restart, attempt 1 of 2"
    ]
    record = state.load(str(watch.state_file))[0].instances["ebbb24e2-ab92-4bbe-be75-7a0ba8e7373a"]
    assert (record.name, record.vm_id, record.attempts, record.last_job) == ("snf-101", 101, 1, 77)
    assert diagnostics(synnefo_db, 101) == [
        (
            "INFO",
            "snf-watcher",
            "Restarted by snf-watcher: ERROR_down, VM 101 STARTED in Synnefo: restart, attempt 1 of 2; "
            "Ganeti job 77",
        )
    ]
    metrics = watch.metrics.read_text()
    assert "snf_watcher_restarts_submitted 1\n" in metrics
    assert 'snf_watcher_instances{status="ERROR_down"} 1\n' in metrics
    assert "snf_watcher_pass_exit_code 0\n" in metrics
    assert oct(watch.state_file.stat().st_mode & 0o777) == "0o600"

    code, out, _ = watch("status")
    assert code == 0
    assert "1 instances with a restart record" in out
    assert "snf-101 (VM 101, ebbb24e2-ab92-4bbe-be75-7a0ba8e7373a): trying; attempts 1/2" in out
    assert "(job 77 not checked yet)" in out

    # the job ran, the instance runs: the record is dropped
    rapi_server.set_body(INSTANCES, instances({"snf-101": "running"}))
    rapi_server.set_body(JOBS, [job(77, "success")])
    code, report = pass_json(watch)
    assert code == 0
    assert [(v["instance"], v["rule"], v["text"]) for v in report["verdicts"]] == [
        ("snf-101", "recovered", "running again (last startup job 77: success)")
    ]
    assert state.load(str(watch.state_file))[0].instances == {}
    assert len(rapi_server.seen(STARTUP_101, "PUT")) == 1


def test_a_vm_stopped_in_synnefo_is_left_alone(watch, rapi_server):
    rapi_server.set_body(INSTANCES, instances({"snf-102": "ERROR_down", "snf-101": "running"}))
    code, report = pass_json(watch)
    assert code == 0
    assert [(v["instance"], v["rule"], v["restart"]) for v in report["verdicts"]] == [
        ("snf-102", "owner-stopped", False)
    ]
    assert [r for r in rapi_server.requests if r.method == "PUT"] == []


def test_it_gives_up_after_max_tries_says_so_and_starts_again_after_a_reset(watch, rapi_server, synnefo_db):
    rapi_server.set_body(STARTUP_101, 80, method="PUT")
    rapi_server.set_body(JOBS, [job(80, "error")])  # every startup fails, the instance stays ERROR_down
    codes = [watch()[0] for _ in range(2)]
    code, out, _ = watch()
    codes.append(code)
    assert codes == [0, 1, 2]  # restart; restart after a failed one (WARNING); giving up (CRITICAL)
    assert out.startswith("snf-watcher CRITICAL: ")
    assert (
        "  CRITICAL snf-101 [giving-up] ERROR_down; giving up after 2 attempts (last startup job 80: error)"
        in out
    )
    code, out, _ = watch()
    assert code == 2
    assert (
        "snf-101 [gave-up] ERROR_down; gave up after 2 attempts (last startup job 80: error); next try" in out
    )
    assert len(rapi_server.seen(STARTUP_101, "PUT")) == 2
    assert [d[:2] for d in diagnostics(synnefo_db, 101)] == [
        ("INFO", "snf-watcher"),
        ("INFO", "snf-watcher"),
        ("ERROR", "snf-watcher"),  # once, though two passes reported it
    ]
    assert diagnostics(synnefo_db, 101)[2][2] == (
        "snf-watcher gave up restarting it: ERROR_down; giving up after 2 attempts"
        " (last startup job 80: error)"
    )
    code, out, _ = watch("status")
    assert "snf-101 (VM 101, ebbb24e2-ab92-4bbe-be75-7a0ba8e7373a): GAVE UP at" in out

    code, out, _ = watch("reset", "snf-101")
    assert (code, out) == (0, "reset snf-101: 2 attempts forgotten; the next pass may restart it\n")
    code, out, err = watch()
    assert code == 0, out + err  # a fresh budget: tried again
    assert len(rapi_server.seen(STARTUP_101, "PUT")) == 3


def test_rapi_down_is_critical_and_changes_nothing(watch, rapi_server):
    rapi_server.stop()
    code, out, _ = watch()
    assert code == 2
    assert out == (
        f"snf-watcher CRITICAL: RAPI {rapi_server.url}/version: connection refused (is ganeti-rapi "
        "running on the master?); nothing changed\n"
    )
    assert not watch.state_file.exists()
    assert "snf_watcher_pass_exit_code 2\n" in watch.metrics.read_text()


def test_a_paused_watcher_does_nothing(watch, rapi_server):
    rapi_server.set_body(STARTUP_101, 81, method="PUT")
    code, out, _ = watch("pause", "--for", "2h", "--reason", "kernel upgrade")
    assert code == 0 and out.startswith("watcher paused until ") and out.endswith(": kernel upgrade\n")
    code, out, _ = watch()
    assert code == 0
    assert out.startswith("snf-watcher OK: paused until ") and out.endswith(": kernel upgrade\n")
    assert rapi_server.requests == []
    assert watch("resume")[:2] == (0, "watcher resumed\n")

    until = int(time.time()) + 600
    watch.ganeti_pause.write_text(f"{until}\n")  # gnt-cluster watcher pause 10m
    code, out, _ = watch()
    assert code == 0
    assert out == (
        f"snf-watcher OK: paused until {report.iso(until)} ({watch.ganeti_pause}): "
        "gnt-cluster watcher pause\n"
    )
    assert rapi_server.requests == []
    watch.ganeti_pause.write_text(f"{int(time.time()) - 1}\n")  # expired
    assert watch()[0] == 0
    assert len(rapi_server.seen(STARTUP_101, "PUT")) == 1


def test_a_second_pass_finds_the_lock_held_and_says_by_whom(watch, rapi_server):
    fd = state.lock(str(watch.state_file))
    try:
        code, out, _ = watch()
        assert code == 0
        assert out.startswith(
            f"snf-watcher OK: another pass (pid {os.getpid()}) holds {watch.state_file}.lock"
        )
        os.pwrite(fd, f"{os.getpid()} {time.time() - 3600:.3f}\n".ljust(40).encode(), 0)  # held for an hour
        code, out, _ = watch()
        assert code == 1
        assert out.rstrip().endswith("nothing done; held longer than 900s: is it stuck?")
        assert "snf_watcher_lock_busy 1\n" in watch.metrics.read_text()
    finally:
        os.close(fd)
    assert rapi_server.requests == []


def test_dry_run_decides_and_changes_nothing(watch, rapi_server, synnefo_db):
    code, out, _ = watch("--dry-run")
    assert code == 0
    assert "would submit 1 restarts" in out.splitlines()[0]
    assert "snf-101 [restart]" in out
    assert rapi_server.seen(STARTUP_101, "PUT") == []
    assert not watch.state_file.exists() and not watch.metrics.exists()
    assert diagnostics(synnefo_db, 101) == []


def test_the_number_of_rapi_calls_does_not_grow_with_the_cluster(watch, rapi_server):
    rapi_server.set_body(INSTANCES, instances({"snf-101": "running"}))
    small = pass_json(watch, "--dry-run")[1]["rapi_calls"]
    rapi_server.set_body(INSTANCES, instances({"snf-101": "running"}, extra=2000))
    big = pass_json(watch, "--dry-run")[1]
    assert big["statuses"]["running"] == 2002
    assert (small, big["rapi_calls"]) == (6, 6)  # version, jobs, instances, nodes, networks, node groups


def test_without_a_database_the_pass_cannot_tell_what_owners_want(make_config, rapi_server):
    path = make_config(watcher={"metrics_file": None})
    r = subprocess.run([command("snf-watcher"), "--config", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert r.stdout == (
        f"snf-watcher UNKNOWN: {path}: database.dsn is not set: cannot tell which VMs their owners want "
        "running\n"
    )
    assert rapi_server.requests == []


@pytest.mark.parametrize("master", ["node2.ganeti.test", None])
def test_on_a_node_that_is_not_the_master_the_pass_does_nothing_and_says_why(watch, rapi_server, master):
    """Every master candidate has the cron entry; only the master's pass may act."""
    if master is None:
        os.unlink(watch.ssconf_dir / "ssconf_master_node")
    else:
        (watch.ssconf_dir / "ssconf_master_node").write_text(master + "\n")
    for args in ((), ("reconcile", "--fix-all")):
        code, out, _ = watch(*args)
        where = f"{master} is" if master else f"no ssconf_master_node in {watch.ssconf_dir}"
        assert (code, out) == (0, f"snf-watcher OK: this node is not the master ({where}): nothing to do\n")
    assert rapi_server.requests == []
    assert not os.path.exists(watch.state_file)


def test_status_as_json(watch, rapi_server):
    rapi_server.set_body(STARTUP_101, 77, method="PUT")
    watch()
    code, out, _ = watch("status", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert {k: row[k] for k in ("instance", "vm_id", "attempts", "max_tries", "last_job", "gave_up")} == {
        "instance": "snf-101",
        "vm_id": 101,
        "attempts": 1,
        "max_tries": 2,
        "last_job": 77,
        "gave_up": None,
    }
    assert row["next_attempt"] >= row["last_attempt"]
