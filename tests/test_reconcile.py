"""The reconciliation diff as a pure function over recorded RAPI bodies (Ganeti 3.0.2) and rows.

Recorded instances: inst1 running (eth0 on testnet 203.0.113.2, eth1 198.51.100.22; 2 vCPUs,
256 MiB), inst2 ADMIN_down, inst3 ERROR_down, inst4 ERROR_up, inst6 ADMIN_offline. They are
renamed snf-<id> as Synnefo names them; inst1's NICs snf-nic-201/202, testnet snf-net-1.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FIXTURES

from snf_watcher import reconcile, snapshot
from snf_watcher.apply import Flavor, IpRow, NicRow
from snf_watcher.reconcile import Row

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=1)
FLAVOR = Flavor(3, 2, 256, 20, 1)  # what inst1 is: 2 vCPUs, 256 MiB, a 20 GiB disk
SMALL = Flavor(1, 1, 64, 20, 1)  # what the others are
NAMES = {
    "inst1.ganeti.test": "snf-101",
    "inst2.ganeti.test": "snf-102",
    "inst3.ganeti.test": "snf-103",
    "inst4.ganeti.test": "snf-104",
    "inst6.ganeti.test": "snf-106",
}


def cluster(
    statuses: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    jobs: list | None = None,
    foreign_nics: tuple[str, ...] = (),
):
    body = copy.deepcopy(json.loads((FIXTURES / "rapi" / "instances-bulk.json").read_text()))
    for i in body:
        i["name"] = NAMES[i["name"]]
        i["status"] = (statuses or {}).get(i["name"], i["status"])
        i["disk.sizes"] = [20 * 1024]
        if i["name"] == "snf-101":
            i["nic.names"] = ["snf-nic-201", "snf-nic-202"]
            i["nic.networks.names"] = ["snf-net-1", "snf-net-2"]
        elif i["name"] not in foreign_nics:  # NICs of Synnefo's would have rows: the others have none
            for key in [k for k in i if k.startswith("nic.")]:
                i[key] = []
    body = [i for i in body if i["name"] not in drop]
    return snapshot.ganeti(body, [], jobs or [])


def nic(nic_id: int, index: int, network: int, mac: str, ip: str | None, state: str = "ACTIVE") -> NicRow:
    ips = (IpRow(nic_id + 100, ip, False, network, network),) if ip else ()
    return NicRow(nic_id, network, index, mac, state, LONG_AGO, ips)


INST1_NICS = (
    nic(201, 0, 1, "aa:00:01:2b:ad:27", "203.0.113.2"),
    nic(202, 1, 2, "aa:00:00:1a:42:4f", "198.51.100.22"),
)


def row(vm_id: int, operstate: str, **kw) -> Row:
    values = dict(
        deleted=False,
        action=None,
        flavor=FLAVOR if vm_id == 101 else SMALL,
        task=None,
        task_job_id=None,
        backendjobid=10,
        created=LONG_AGO,
        updated=LONG_AGO,
        nics=INST1_NICS if vm_id == 101 else (),
    )
    return Row(vm_id, operstate, **(values | kw))


IN_SYNC = {
    101: row(101, "STARTED"),
    102: row(102, "STOPPED"),
    103: row(103, "STARTED"),  # ERROR_down: the restart policy's
    104: row(104, "STOPPED"),  # ERROR_up: says nothing about what the owner wants
    106: row(106, "STOPPED"),
}


def findings(rows, g=None, jobs=None, window=None) -> list[tuple]:
    found = reconcile.diff(g or cluster(), rows, jobs or {}, "snf-", NOW, window)
    return [(f.kind, f.id, f.ganeti, f.database, f.fix) for f in found]


def test_a_cluster_in_step_with_its_rows_has_no_findings():
    assert findings(IN_SYNC) == []


def test_stale_rows_and_the_rows_that_are_not_stale():
    rows = {
        **IN_SYNC,
        107: row(107, "STARTED"),
        108: row(108, "ERROR"),  # a failed create: its owner sees ERROR
        109: row(109, "ERROR", action="DESTROY"),  # the owner asked to destroy it
        110: row(110, "STOPPED", deleted=True),
    }
    assert findings(rows) == [
        ("stale", 107, "no instance", "STARTED", "mark the VM DESTROYED"),
        ("stale", 109, "no instance", "ERROR", "mark the VM DESTROYED"),
    ]


def test_orphans_are_instances_without_a_live_row():
    rows = {k: v for k, v in IN_SYNC.items() if k != 102} | {106: replace(IN_SYNC[106], deleted=True)}
    assert findings(rows) == [
        ("orphan", 102, "ADMIN_down", "no row", "remove the instance through RAPI"),
        ("orphan", 106, "ADMIN_offline", "deleted", "remove the instance through RAPI"),
    ]


def test_operstate_follows_what_ganeti_runs_but_not_its_error_states():
    rows = IN_SYNC | {101: replace(IN_SYNC[101], operstate="STOPPED"), 102: row(102, "STARTED")}
    rows |= {103: row(103, "STOPPED"), 104: row(104, "STARTED")}  # ERROR_down, ERROR_up: nothing
    found = reconcile.diff(cluster(), rows, {}, "snf-", NOW)
    assert [(f.kind, f.id, f.ganeti, f.database, f.operstate) for f in found] == [
        ("operstate", 101, "running", "STOPPED", "STARTED"),
        ("operstate", 102, "ADMIN_down", "STARTED", "STOPPED"),
    ]
    assert found[0].updated == LONG_AGO  # the fix applies only to the row as it was seen


def test_a_flavor_that_does_not_match_the_instance():
    rows = IN_SYNC | {101: replace(IN_SYNC[101], flavor=Flavor(4, 1, 128, 20, 1))}
    found = reconcile.diff(cluster(), rows, {}, "snf-", NOW)
    assert [(f.kind, f.ganeti, f.database, f.flavor) for f in found] == [
        (
            "flavor",
            "2 vCPUs, 256 MiB, disk 20480 MiB",
            "flavor 4: 1 vCPUs, 128 MiB, disk 20 GiB",
            (2, 256, 20480),
        )
    ]


def test_a_diskless_instance_on_another_flavor_says_no_disk():
    body = cluster()
    body = replace(
        body, instances=[replace(i, disk_sizes=()) if i.name == "snf-101" else i for i in body.instances]
    )
    rows = IN_SYNC | {101: replace(IN_SYNC[101], flavor=Flavor(4, 1, 128, 20, 1))}
    (found,) = reconcile.diff(body, rows, {}, "snf-", NOW)
    assert (found.kind, found.ganeti, found.flavor) == ("flavor", "2 vCPUs, 256 MiB, no disk", (2, 256, None))


def test_a_nic_row_without_a_mac_yet_shows_a_dash():
    waiting = replace(nic(203, 2, 1, "", None, "BUILD"), mac=None)  # asked for an hour ago, never attached
    (found,) = reconcile.diff(
        cluster(), IN_SYNC | {101: replace(IN_SYNC[101], nics=(*INST1_NICS, waiting))}, {}, "snf-", NOW
    )
    assert found.database.endswith(", 203 - - BUILD")


@pytest.mark.parametrize(
    "nics",
    [
        (INST1_NICS[0],),  # a NIC Ganeti has is missing
        (*INST1_NICS, nic(203, 2, 1, "aa:00:01:00:00:03", None)),  # an extra ACTIVE NIC row
        (replace(INST1_NICS[0], mac="aa:00:01:ff:ff:ff"), INST1_NICS[1]),  # another MAC
        (INST1_NICS[0], nic(202, 1, 2, "aa:00:00:1a:42:4f", "198.51.100.99")),  # another address
    ],
)
def test_nics_that_differ_from_ganetis(nics):
    rows = IN_SYNC | {101: replace(IN_SYNC[101], nics=nics)}
    found = reconcile.diff(cluster(), rows, {}, "snf-", NOW)
    assert [(f.kind, f.id) for f in found] == [("nics", 101)]  # (the first: Ganeti has a NIC without row)
    assert found[0].ganeti == (
        "snf-nic-201 aa:00:01:2b:ad:27 203.0.113.2, snf-nic-202 aa:00:00:1a:42:4f 198.51.100.22"
    )
    assert [n.nic_id for n in found[0].nics] == [201, 202]


def test_a_nic_being_attached_is_not_drift():
    building = replace(nic(203, 2, 1, "aa:00:01:00:00:03", None, "BUILD"), created=NOW - timedelta(seconds=5))
    assert findings(IN_SYNC | {101: replace(IN_SYNC[101], nics=(*INST1_NICS, building))}) == []


@pytest.mark.parametrize(
    "status, want", [("success", "STARTED"), ("error", "ERROR"), ("canceled", "ERROR"), ("gone", "ERROR")]
)
def test_a_vm_stuck_in_build_gets_the_state_its_ended_create_job_implies(status, want):
    rows = IN_SYNC | {101: replace(IN_SYNC[101], operstate="BUILD", backendjobid=21)}
    found = reconcile.diff(cluster(), rows, {21: status}, "snf-", NOW)
    assert [(f.kind, f.ganeti, f.operstate, f.job_id) for f in found] == [
        ("build", f"create job 21 {status}, instance running", want, 21)
    ]


def test_a_build_whose_job_runs_or_is_young_is_left_alone_and_an_old_unsubmitted_one_is_not():
    young = row(107, "BUILD", backendjobid=None, created=NOW - timedelta(minutes=2))
    old = row(108, "BUILD", backendjobid=None)
    running = row(109, "BUILD", backendjobid=30)
    archived = row(110, "BUILD", backendjobid=31)  # no instance, job archived after an error
    rows = IN_SYNC | {107: young, 108: old, 109: running, 110: archived}
    assert findings(rows, jobs={30: "running", 31: "error"}) == [
        ("build", 108, "create job None never submitted, no instance", "BUILD", "set operstate ERROR"),
        ("build", 110, "create job 31 error, no instance", "BUILD", "set operstate ERROR"),
    ]
    assert reconcile.jobs_to_look_up(cluster(), rows.values()) == {30, 31}  # BUILD rows' create jobs


def test_a_pending_task_whose_job_ended_or_vanished_is_cleared():
    rows = IN_SYNC | {102: row(102, "STOPPED", task="START", task_job_id=40)}
    for status in ("success", "error", "gone"):
        assert findings(rows, jobs={40: status}) == [
            ("task", 102, f"job 40 {status}", "task START (job 40)", "clear the task")
        ]


def test_nothing_is_judged_while_a_job_is_in_flight_for_the_vm():
    drifted = IN_SYNC | {101: replace(IN_SYNC[101], operstate="STOPPED", flavor=Flavor(1, 1, 128, 20, 1))}
    job = {
        "id": 50,
        "status": "running",
        "ops": [{"OP_ID": "OP_INSTANCE_REBOOT", "instance_name": "snf-101"}],
    }
    assert findings(drifted, g=cluster(jobs=[job])) == []
    node_job = {
        "id": 51,
        "status": "queued",
        "ops": [{"OP_ID": "OP_NODE_MIGRATE", "node_name": "node1.ganeti.test"}],
    }
    assert findings(drifted, g=cluster(jobs=[node_job])) == []
    # Synnefo's own action on the row (a task whose job is still queued) holds it too
    tasked = drifted | {101: replace(drifted[101], task="REBOOT", task_job_id=52)}
    assert findings(tasked, jobs={52: "queued"}) == []


def test_the_window_limits_what_is_checked():
    rows = {k: replace(v, operstate="BUILD", backendjobid=None) for k, v in IN_SYNC.items()} | {
        107: row(107, "STARTED")
    }
    assert [f[1] for f in findings(rows, window=[107])] == [107]
    assert findings(rows, window=[999]) == []


def test_a_nic_added_behind_synnefos_back_is_drift():
    found = reconcile.diff(cluster(foreign_nics=("snf-102",)), IN_SYNC, {}, "snf-", NOW)
    assert [(f.kind, f.id, f.ganeti, f.database) for f in found] == [
        ("nics", 102, "0 aa:00:00:88:ba:a8 198.51.100.32", "none")
    ]


# ---------------------------------------------------------------- what is done about findings

T0 = 1_795_300_000.0
OPTS = reconcile.Options(
    fix=reconcile.SAFE | {"stale"}, max_tries=2, retry_expiration=3600, max_destructive=1
)


def finding(kind: str, vm_id: int) -> reconcile.Finding:
    return reconcile.Finding(kind, vm_id, f"snf-{vm_id}", "g", "d", "do it")


def vms(*ids: int) -> set[str]:
    """The subjects a pass that checks these VMs has checked."""
    return {f"vm:{i}" for i in ids}


def test_a_destructive_fix_needs_two_consecutive_sightings_and_stays_under_the_cap():
    found = [finding("stale", 7), finding("stale", 8), finding("orphan", 9)]
    first, records = reconcile.decide(found, {}, vms(7, 8, 9), OPTS, T0)
    assert [(o.finding.id, o.action) for o in first] == [(7, "confirm"), (8, "confirm"), (9, "report")]
    second, records = reconcile.decide(found, records, vms(7, 8, 9), OPTS, T0 + 300)
    assert [(o.finding.id, o.action, o.severity) for o in second] == [
        (7, "fix", 1),
        (8, "capped", 1),  # one destructive fix per pass
        (9, "report", 1),  # orphans are not in this pass's fix set
    ]
    # a pass that checks 7 and does not see it again drops its record: fixed
    third, records = reconcile.decide([finding("stale", 8)], records, vms(7, 8), OPTS, T0 + 600)
    assert [(o.finding.id, o.action) for o in third] == [(8, "fix")]
    assert set(records) == {"stale:8", "orphan:9"}  # 9 was not checked: its record stays


def test_a_fix_that_does_not_stick_is_given_up_after_max_tries_then_retried_after_expiry():
    seen, records, t = [], {}, T0
    for _ in range(5):
        outcomes, records = reconcile.decide([finding("operstate", 5)], records, vms(5), OPTS, t)
        seen.append((outcomes[0].action, outcomes[0].severity))
        t += 300
    assert seen == [("fix", 1), ("fix", 1), ("giving-up", 2), ("gave-up", 2), ("gave-up", 2)]
    assert outcomes[0].text == "gave up after 2 fixes that did not stick"
    outcomes, _ = reconcile.decide([finding("operstate", 5)], records, vms(5), OPTS, T0 + 300 + 3601)
    assert outcomes[0].action == "fix"


def test_staggering_checks_every_vm_within_reconciliation_min():
    """1,000 VMs, a pass every 5 minutes, RECONCILIATION_MIN 30 minutes: each pass checks
    1,000 x 300 / 1,800 = 167, and every VM is checked within 6 passes, the least recently first."""
    ids, cursor, last = list(range(1, 1001)), 0, {}
    size = -(-len(ids) * 300 // 1800)
    for n in range(18):
        chosen, cursor = reconcile.window(ids, cursor, size)
        assert len(chosen) == size
        for i in chosen:
            assert n - last.get(i, -1) <= 6, f"VM {i} waited {n - last.get(i, -1)} passes"
            last[i] = n
        if n == 2:
            ids = [*ids, 1001, 5000]  # new VMs are picked up within the cycle too
    assert set(last) == set(ids)
    assert reconcile.window([3, 1, 2], 0, 10) == ([1, 2, 3], 0)
