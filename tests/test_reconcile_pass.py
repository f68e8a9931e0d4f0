"""`snf-watcher reconcile` against the fake HTTPS ganeti-rapi and a real PostgreSQL with the seed:
each fix reaches the rows through the outbox, the two-pass rule and the cap for destructive fixes,
the compare-and-set skip, and an offline backend.

Seed rows: 101 STARTED (flavor 2; NICs 201 203.0.113.2, 202 192.168.10.1), 102 STOPPED (flavor 3;
NIC 203), 103 BUILD (create job 21), 104 ERROR, 105 deleted. watcher_pass.instances() makes the
recorded instances match the seed for snf-101 and snf-102.
"""

from __future__ import annotations

import json

from streams import store
from watcher_pass import INSTANCES, findings, instances, reconcile

from snf_watcher import config, messages
from snf_watcher.delivery import Delivery
from snf_watcher.outbox import Outbox


def vm(db, vm_id: int) -> tuple:
    return db.one("SELECT operstate, deleted, flavor_id FROM db_virtualmachine WHERE id = %s", (vm_id,))


def test_detection_only_by_default_then_a_fix_and_a_clean_second_pass(watch, rapi_server, synnefo_db):
    rapi_server.set_body(INSTANCES, instances({"snf-101": "running", "snf-102": "running"}))
    code, report = reconcile(watch)
    assert code == 1  # drift found: WARNING
    assert findings(report) == [("operstate", 102, "report")]
    (f,) = report["findings"]
    assert (f["ganeti"], f["database"]) == ("running", "STOPPED")
    assert f["text"] == "not fixed (--fix-operstate would set operstate STARTED)"
    assert vm(synnefo_db, 102)[0] == "STOPPED"

    code, report = reconcile(watch, "--fix-operstate")
    assert findings(report) == [("operstate", 102, "fix")]
    assert vm(synnefo_db, 102)[0] == "STARTED"
    assert synnefo_db.query(
        "SELECT level, message FROM db_virtualmachinediagnostic "
        "WHERE machine_id = 102 AND source = 'snf-watcher'"
    ) == [
        (
            "INFO",
            "Reconciled by snf-watcher: operstate: Ganeti says running, the database said STOPPED; "
            "set operstate STARTED",
        )
    ]
    code, report = reconcile(watch, "--fix-all")
    assert (code, findings(report)) == (0, [])


def test_a_resized_instance_moves_its_vm_to_the_matching_flavor(watch, rapi_server, synnefo_db):
    body = instances({"snf-101": "running"})
    (inst,) = [i for i in body if i["name"] == "snf-101"]
    inst["beparams"] |= {"vcpus": 4, "maxmem": 4096}
    inst["disk.sizes"] = [80 * 1024]
    rapi_server.set_body(INSTANCES, body)
    code, report = reconcile(watch, "--fix-flavor")
    assert findings(report) == [("flavor", 101, "fix")]
    assert report["findings"][0]["ganeti"] == "4 vCPUs, 4096 MiB, disk 81920 MiB"
    assert vm(synnefo_db, 101)[2] == 3


def test_nics_are_made_to_match_ganeti(watch, rapi_server, synnefo_db):
    body = instances({"snf-101": "running"})
    (inst,) = [i for i in body if i["name"] == "snf-101"]
    inst["nic.ips"] = ["203.0.113.2", "192.168.10.7"]  # eth1's address changed behind Synnefo's back
    rapi_server.set_body(INSTANCES, body)
    code, report = reconcile(watch, "--fix-nics")
    assert findings(report) == [("nics", 101, "fix")]
    assert synnefo_db.query("SELECT address FROM db_ipaddress WHERE nic_id = 202 AND NOT deleted") == [
        ("192.168.10.7",)
    ]
    assert reconcile(watch, "--fix-nics")[1]["findings"] == []


def test_a_stale_row_is_destroyed_only_after_two_sightings_and_under_the_cap(watch, rapi_server, synnefo_db):
    rapi_server.set_body(INSTANCES, [i for i in instances({}) if i["name"] not in ("snf-101", "snf-102")])
    first = findings(reconcile(watch, "--fix-stale")[1])
    assert [f for f in first if f[0] == "stale"] == [("stale", 101, "confirm"), ("stale", 102, "confirm")]
    assert vm(synnefo_db, 101)[:2] == ("STARTED", False)
    code, report = reconcile(watch, "--fix-stale")
    assert [f for f in findings(report) if f[0] == "stale"] == [("stale", 101, "fix"), ("stale", 102, "fix")]
    assert vm(synnefo_db, 101)[:2] == ("DESTROYED", True)
    assert synnefo_db.query("SELECT id FROM db_networkinterface WHERE machine_id = 101") == []


def test_the_cap_on_destructive_fixes(make_config, watch, rapi_server, synnefo_db, tmp_path):
    rapi_server.set_body(INSTANCES, [i for i in instances({}) if i["name"] not in ("snf-101", "snf-102")])
    cfg = tmp_path / "snf-watcher.yaml"
    cfg.write_text(cfg.read_text().replace("max_tries: 2", "max_tries: 2\n  max_destructive_per_pass: 1"))
    assert "max_destructive_per_pass: 1" in cfg.read_text()
    reconcile(watch, "--fix-stale")
    stale = [f for f in findings(reconcile(watch, "--fix-stale")[1]) if f[0] == "stale"]
    assert stale == [("stale", 101, "fix"), ("stale", 102, "capped")]
    assert [vm(synnefo_db, i)[0] for i in (101, 102)] == ["DESTROYED", "STOPPED"]


def test_an_orphan_is_removed_through_rapi_after_two_sightings(watch, rapi_server, synnefo_db):
    body = instances({})
    body.append({**body[0], "name": "snf-150", "uuid": "orphan-uuid", "status": "ADMIN_down"})
    rapi_server.set_body(INSTANCES, body)
    rapi_server.set_body("/2/instances/snf-150", 91, method="DELETE")
    assert ("orphan", 150, "confirm") in findings(reconcile(watch, "--fix-orphan")[1])
    assert rapi_server.seen("/2/instances/snf-150", "DELETE") == []
    code, report = reconcile(watch, "--fix-orphan")
    assert ("orphan", 150, "fix") in findings(report)
    (delete,) = rapi_server.seen("/2/instances/snf-150", "DELETE")
    assert delete.query["reason"] == ["snf-watcher: reconcile: orphan (no row)"]
    assert report["jobs"] == {"snf-150": 91}


def test_an_offline_backend_yields_no_findings(watch, rapi_server, synnefo_db):
    rapi_server.set_body(INSTANCES, [])  # Ganeti "has nothing": never "everything is stale"
    synnefo_db.query("UPDATE db_backend SET offline = true WHERE id = 1")
    code, out, log = watch("reconcile", "--fix-all", "--json")
    report = json.loads(out)
    assert report["findings"] == []
    assert "backend 1 is offline in db_backend: not reconciled" in report["problems"]
    # and in the log, which is all cron keeps of a pass
    assert "WARNING: problem: backend 1 is offline in db_backend: not reconciled" in log
    assert vm(synnefo_db, 101)[:2] == ("STARTED", False)


def test_a_correction_for_a_row_that_changed_since_it_was_seen_is_not_applied(make_config, synnefo_db):
    """Compare and set: the correction names the row's `updated` as seen; Synnefo changed it since."""
    cfg = config.load(make_config(database={"dsn": synnefo_db.dsn, "backend_id": 1}))
    (seen,) = synnefo_db.one("SELECT updated FROM db_virtualmachine WHERE id = 102")
    synnefo_db.query("UPDATE db_virtualmachine SET updated = now(), action = 'START' WHERE id = 102")
    correction = messages.correction(
        instance="snf-102",
        kind="operstate",
        event_time=[2_000_000_000, 0],
        expect_updated=seen.isoformat(),
        operstate="STARTED",
    )
    store(cfg.outbox.path, cfg.outbox.spool_dir, [correction])
    box = Outbox(cfg.outbox.path)
    worker = Delivery(cfg, box)
    try:
        totals = worker.drain()
    finally:
        worker.close()
        box.close()
    assert (totals.delivered, totals.skipped, totals.dead) == (0, 1, 0)
    assert vm(synnefo_db, 102)[0] == "STOPPED"


def test_many_fixes_are_applied_in_batches_on_two_connections(watch, rapi_server, synnefo_db, tmp_path):
    cfg = tmp_path / "snf-watcher.yaml"
    cfg.write_text(cfg.read_text().replace("backend_id: 1", "backend_id: 1\n  batch_size: 1"))
    assert "batch_size: 1" in cfg.read_text()
    rapi_server.set_body(INSTANCES, instances({"snf-101": "running"}))
    synnefo_db.query("UPDATE db_virtualmachine SET operstate = 'STOPPED' WHERE id = 101")
    synnefo_db.query("UPDATE db_virtualmachine SET operstate = 'STARTED' WHERE id = 102")  # ADMIN_down
    code, report = reconcile(watch, "--fix-operstate")
    assert findings(report) == [("operstate", 101, "fix"), ("operstate", 102, "fix")]
    assert [vm(synnefo_db, i)[0] for i in (101, 102)] == ["STARTED", "STOPPED"]
