"""The restart policy as a pure function, over recorded RAPI bodies (Ganeti 3.0.2) and row values.

Recorded cluster: inst1 running, inst2 ADMIN_down, inst3 ERROR_down, inst4
ERROR_up, inst6 ADMIN_offline, all on node1; job 26 (OP_TEST_DELAY) running.
Instances are renamed snf-<id> the way Synnefo names them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from conftest import FIXTURES

from snf_watcher import restart, snapshot
from snf_watcher.restart import CRITICAL, OK, WARNING, Policy, decide
from snf_watcher.snapshot import Vm
from snf_watcher.state import Record, State

RAPI = FIXTURES / "rapi"
BOOT_ID = "df15a980-d87f-4acb-a336-19d63a2c6c47"  # node1's, from the recorded watcher state
INST3_UUID = "ebbb24e2-ab92-4bbe-be75-7a0ba8e7373a"
NOW = 1_795_300_000.0
POLICY = Policy(max_tries=5, retry_expiration=8 * 3600, max_restarts=10, prefix="snf-")


def recorded(name: str) -> list[dict]:
    return json.loads((RAPI / name).read_text())


def cluster(
    names: dict[str, str] | None = None,
    statuses: dict[str, str] | None = None,
    jobs: list[dict] | None = None,
    bootid: str = BOOT_ID,
) -> snapshot.Ganeti:
    """The recorded cluster, inst3 named snf-101 unless told otherwise, with statuses overridden."""
    names = {"inst3.ganeti.test": "snf-101"} if names is None else names
    instances = copy.deepcopy(recorded("instances-bulk.json"))
    for i in instances:
        i["name"] = names.get(i["name"], i["name"])
        i["status"] = (statuses or {}).get(i["name"], i["status"])
    nodes = [
        {"name": n["name"], "offline": n["offline"], "bootid": bootid} for n in recorded("nodes-bulk.json")
    ]
    return snapshot.ganeti(instances, nodes, recorded("jobs-bulk-with-running.json") + (jobs or []))


STARTED = {101: Vm(101, "STARTED", False)}
KNOWN_NODE = State(nodes={"node1.ganeti.test": BOOT_ID})


def only(decision: restart.Decision, instance: str) -> restart.Verdict:
    (v,) = [v for v in decision.verdicts if v.instance == instance]
    return v


def test_a_crashed_vm_its_owner_wants_running_is_restarted():
    d = decide(cluster(), STARTED, KNOWN_NODE, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart, v.severity, v.vm_id) == ("restart", True, OK, 101)
    assert v.text == "ERROR_down, VM 101 STARTED in Synnefo: restart, attempt 1 of 5"
    assert d.restarts == [v]
    assert d.state.instances[INST3_UUID] == Record(
        "snf-101", vm_id=101, attempts=1, first_failure=NOW, last_attempt=NOW
    )
    # running, ADMIN_down, ERROR_up, ADMIN_offline instances without a record: nothing to say
    assert [v.instance for v in d.verdicts] == ["snf-101"]


@pytest.mark.parametrize(
    "vm, rule, text",
    [
        (Vm(101, "STOPPED", False), "owner-stopped", "ERROR_down; VM 101 is STOPPED in Synnefo"),
        (Vm(101, "STARTED", True), "deleted", "ERROR_down; VM 101 is deleted in Synnefo"),
        (
            Vm(101, "STARTED", False, "STOP", 31),
            "task-pending",
            "ERROR_down; Synnefo task STOP (job 31) pending",
        ),
        (None, "not-synnefo", "ERROR_down, but no Synnefo VM row on this backend names it"),
    ],
)
def test_a_vm_its_owner_does_not_want_running_is_left_alone(vm, rule, text):
    d = decide(cluster(), {101: vm} if vm else {}, KNOWN_NODE, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart, v.severity, v.text) == (rule, False, OK, text)
    assert d.restarts == [] and d.state.instances == {}


def test_an_instance_without_the_prefix_is_not_synnefos():
    d = decide(cluster(names={}), STARTED, KNOWN_NODE, POLICY, NOW)
    assert only(d, "inst3.ganeti.test").rule == "not-synnefo"
    assert d.restarts == []


def running_job(job_id: int, op: dict) -> dict:
    return {"id": job_id, "status": "running", "ops": [op], "opstatus": ["running"]}


@pytest.mark.parametrize(
    "op",
    [
        {"OP_ID": "OP_INSTANCE_SET_PARAMS", "instance_name": "snf-101"},
        {"OP_ID": "OP_INSTANCE_MULTI_ALLOC", "instances": ["snf-7", "snf-101"]},
        {"OP_ID": "OP_NODE_EVACUATE", "node_name": "node1.ganeti.test"},
    ],
)
def test_a_job_in_flight_for_the_instance_or_its_node_blocks_the_restart(op):
    d = decide(cluster(jobs=[running_job(90, op)]), STARTED, KNOWN_NODE, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart, v.text) == (
        "job-in-flight",
        False,
        "ERROR_down; Ganeti job 90 in flight for it",
    )


def test_a_finished_job_does_not_block():
    done = {
        **running_job(90, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "snf-101"}),
        "status": "success",
    }
    assert only(decide(cluster(jobs=[done]), STARTED, KNOWN_NODE, POLICY, NOW), "snf-101").restart


def test_a_guest_that_shut_itself_down_is_never_restarted():
    d = decide(cluster(statuses={"snf-101": "USER_down"}), STARTED, KNOWN_NODE, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart) == ("user-down", False)


@pytest.mark.parametrize("status", ["ERROR_nodedown", "ERROR_nodeoffline"])
def test_an_instance_on_a_dead_node_is_helpless_and_not_charged(status):
    before = State(instances={INST3_UUID: Record("snf-101", 101, attempts=2, last_attempt=NOW - 600)})
    d = decide(cluster(statuses={"snf-101": status}), STARTED, before, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart, v.severity) == ("helpless", False, WARNING)
    assert v.text == f"{status}: node node1.ganeti.test cannot run it; not charged"
    assert d.state.instances[INST3_UUID].attempts == 2


def test_the_budget_over_simulated_passes():
    """Always ERROR_down: 5 attempts, give up (once, CRITICAL), stay given up, retry after expiry."""
    state, t, seen = KNOWN_NODE, NOW, []
    for _ in range(8):
        d = decide(cluster(), STARTED, state, POLICY, t)
        v = only(d, "snf-101")
        seen.append((v.rule, v.severity, d.state.instances[INST3_UUID].attempts, len(d.gave_up_now)))
        state, t = d.state, t + 300
    assert seen == [
        ("restart", OK, 1, 0),
        ("restart", OK, 2, 0),
        ("restart", OK, 3, 0),
        ("restart", OK, 4, 0),
        ("restart", OK, 5, 0),
        ("giving-up", CRITICAL, 5, 1),  # once: one diagnostic row
        ("gave-up", CRITICAL, 5, 0),
        ("gave-up", CRITICAL, 5, 0),
    ]
    record = state.instances[INST3_UUID]
    assert record.gave_up == NOW + 5 * 300  # the pass that gave up
    last = record.last_attempt
    assert last == NOW + 4 * 300
    assert only(decide(cluster(), STARTED, state, POLICY, t), "snf-101").text == (
        "ERROR_down; gave up after 5 attempts; next try after 2026-11-22 06:46:40Z "
        "or `snf-watcher reset snf-101`"
    )
    # RETRY_EXPIRATION after the last attempt the record is forgotten: a fresh budget
    d = decide(cluster(), STARTED, state, POLICY, last + 8 * 3600 + 1)
    assert only(d, "snf-101").rule == "restart"
    assert d.state.instances[INST3_UUID].attempts == 1


def test_the_record_is_dropped_as_soon_as_the_instance_runs():
    before = State(instances={INST3_UUID: Record("snf-101", 101, 3, NOW - 900, NOW - 300, 40)})
    d = decide(cluster(statuses={"snf-101": "running"}), STARTED, before, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.severity) == ("recovered", OK)
    assert v.text == "running again (last startup job 40: not checked yet)"
    assert d.state.instances == {}


def test_the_last_jobs_outcome_is_read_from_the_snapshot_and_a_failure_is_a_warning():
    before = State(instances={INST3_UUID: Record("snf-101", 101, 1, NOW - 300, NOW - 300, 18)})
    d = decide(cluster(), STARTED, before, POLICY, NOW)  # recorded job 18: a startup that failed
    v = only(d, "snf-101")
    assert (v.rule, v.severity) == ("restart", WARNING)
    assert v.text.endswith("attempt 2 of 5 (last startup job 18: error)")
    assert d.state.instances[INST3_UUID].last_job is None  # the new job's id is the caller's to fill in


def test_a_node_reboot_is_noted_and_not_charged():
    before = State(
        instances={INST3_UUID: Record("snf-101", 101, 4, NOW - 900, NOW - 300)},
        nodes={"node1.ganeti.test": "0000-old-boot"},
    )
    d = decide(cluster(), STARTED, before, POLICY, NOW)
    v = only(d, "snf-101")
    assert (v.rule, v.restart, v.charged) == ("restart-after-reboot", True, False)
    assert d.rebooted == ("node1.ganeti.test",)
    assert d.state.instances[INST3_UUID].attempts == 4
    assert d.state.nodes == {"node1.ganeti.test": BOOT_ID}
    # the first pass knows no boot id: that is no reboot
    assert decide(cluster(), STARTED, State(), POLICY, NOW).rebooted == ()


def test_at_most_n_restarts_per_pass_oldest_failure_first():
    instances = [
        {"name": f"snf-{i}", "uuid": f"uuid-{i}", "status": "ERROR_down", "pnode": "node1.ganeti.test"}
        for i in range(1, 6)
    ]
    g = snapshot.ganeti(instances, [{"name": "node1.ganeti.test", "bootid": BOOT_ID}], [])
    vms = {i: Vm(i, "STARTED", False) for i in range(1, 6)}
    before = State(
        instances={
            "uuid-4": Record("snf-4", 4, 1, first_failure=NOW - 900, last_attempt=NOW - 300),
            "uuid-2": Record("snf-2", 2, 0, first_failure=NOW - 600),
        },
        nodes={"node1.ganeti.test": BOOT_ID},
    )
    d = decide(g, vms, before, replace(POLICY, max_restarts=2), NOW)
    assert [v.instance for v in d.restarts] == ["snf-4", "snf-2"]
    deferred = [v for v in d.verdicts if v.rule == "deferred"]
    assert [v.instance for v in deferred] == ["snf-1", "snf-3", "snf-5"]
    assert all(v.severity == WARNING and not v.restart for v in deferred)
    assert deferred[0].text.endswith("deferred: 2 restarts per pass at most, older failures first")
    # the deferred keep their place in the queue: next pass they are the oldest
    assert d.state.instances["uuid-1"].first_failure == NOW
    assert d.state.instances["uuid-1"].attempts == 0


def test_a_renamed_instance_keeps_its_history():
    before = State(
        instances={INST3_UUID: Record("snf-99", 99, 2, NOW - 900, NOW - 300)}, nodes=KNOWN_NODE.nodes
    )
    d = decide(cluster(), STARTED, before, POLICY, NOW)
    assert d.state.instances[INST3_UUID].name == "snf-101"
    assert d.state.instances[INST3_UUID].attempts == 3


def test_records_of_vanished_or_expired_instances_are_forgotten():
    before = State(
        instances={
            "gone-uuid": Record("snf-55", 55, 1, NOW - 600, NOW - 300),
            INST3_UUID: Record("snf-101", 101, 5, NOW - 9 * 3600, NOW - 8 * 3600 - 1, gave_up=NOW - 8 * 3600),
        },
        nodes=KNOWN_NODE.nodes,
    )
    d = decide(cluster(statuses={"snf-101": "ADMIN_down"}), STARTED, before, POLICY, NOW)
    assert d.state.instances == {}


def test_reset_forgets_by_name_or_uuid():
    before = State(instances={INST3_UUID: Record("snf-101", 101, 5, gave_up=NOW)})
    for key in ("snf-101", INST3_UUID):
        after, record = restart.reset(before, key)
        assert after.instances == {} and record.attempts == 5
    assert restart.reset(before, "snf-7") == (before, None)


def test_a_body_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(snapshot.BadSnapshot, match="RAPI instance snf-1: status is None, expected str"):
        snapshot.ganeti([{"name": "snf-1", "uuid": "u", "pnode": "n"}], [], [])
    with pytest.raises(snapshot.BadSnapshot, match="RAPI's jobs answer is not a list of objects"):
        snapshot.ganeti([], [], {"not": "a list"})
