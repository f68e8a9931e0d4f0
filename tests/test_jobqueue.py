"""Job files -> messages, on every version Ganeti 3.0.2 really wrote."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import job_versions, recorded_job_ids

from ganeti_hooks import jobqueue
from ganeti_hooks.jobqueue import JobParseError, advance, advance_hwm, parse_job

MTIME = [1, 2]  # a fallback no recorded op should need, except where asserted

# Which timestamp Synnefo's rule picks for each status (DESIGN section 3).
TIME_SOURCE = {
    "queued": ("job", "received_timestamp"),
    "waiting": ("op", "start_timestamp"),
    "canceling": ("op", "start_timestamp"),
    "running": ("op", "exec_timestamp"),
    "success": ("op", "end_timestamp"),
    "error": ("op", "end_timestamp"),
    "canceled": ("op", "end_timestamp"),
}


def replay(job_id: int) -> list[dict]:
    """All messages one job's recorded versions produce, in order, as eventd would store them."""
    reported, out = None, []
    for data in job_versions(job_id):
        progress = advance(parse_job(data), reported, "cluster.ganeti.test", MTIME)
        out += [msg for _, msg in progress.new]
        reported = progress.reported
    return out


@pytest.mark.parametrize("job_id", recorded_job_ids())
def test_every_recorded_version_parses_and_times_follow_the_rule(job_id):
    for data in job_versions(job_id):
        raw = json.loads(data)
        job = parse_job(data)
        assert job.id == raw["id"] == job_id
        for op, raw_op in zip(job.ops, raw["ops"], strict=True):
            assert op.status == raw_op["status"]
            scope, key = TIME_SOURCE[op.status]
            expected = (raw if scope == "job" else raw_op)[key] or raw["end_timestamp"]
            assert jobqueue.event_time(job, op) == expected


@pytest.mark.parametrize("job_id", recorded_job_ids())
def test_each_final_status_is_reported_exactly_once(job_id):
    final = [raw["status"] for raw in json.loads(job_versions(job_id)[-1])["ops"]]
    msgs = replay(job_id)
    keys = [(m["jobId"], m["opIndex"], m["status"]) for m in msgs]
    assert len(keys) == len(set(keys)), "a status was reported twice"
    if msgs:  # jobs Synnefo has no use for (cluster, OS, group ops) produce nothing
        for index, status in enumerate(final):
            assert keys.count((job_id, index, status)) == 1


def test_instance_create_success_carries_its_fields_and_last_log_line():
    msgs = replay(8)
    assert [m["status"] for m in msgs] == ["queued", "waiting", "running", "success"]
    success = msgs[-1]
    assert success == {
        "type": "ganeti-op-status",
        "instance": "inst1.ganeti.test",
        "operation": "OP_INSTANCE_CREATE",
        "status": "success",
        "jobId": 8,
        "opIndex": 0,
        "logmsg": " - INFO: Instance inst1.ganeti.test's disks are in sync",
        "result": ["node1.ganeti.test"],
        "event_time": [1795254548, 150987],
        "cluster": "cluster.ganeti.test",
        "job_fields": {
            "nics": [
                {"ip": "pool", "name": "eth0", "network": "testnet"},
                {"ip": "198.51.100.20", "link": "gnt-br0", "name": "eth1"},
            ],
            "disks": [{"size": 4}],
            "beparams": {"vcpus": 1, "maxmem": 128, "minmem": 128},
            "hvparams": {},
        },
        "tags": [],
    }


def test_running_rewrites_refresh_the_pending_message_with_the_new_log_line():
    reported, refreshed = None, []
    for data in job_versions(8):
        progress = advance(parse_job(data), reported, None, MTIME)
        refreshed += progress.refreshed
        reported = progress.reported
    logs = [m["logmsg"] for _, m in refreshed]
    assert len(refreshed) == 10  # 11 running versions (v6..v16): the first is new, the rest refresh
    assert {k for k, _ in refreshed} == {"op:8:0:running"}
    assert logs[-1] == " - INFO: Instance inst1.ganeti.test's disks are in sync"


def test_hooks_abort_is_an_error_with_the_vetoing_script_in_the_result():
    final = replay(18)[-1]
    assert (final["operation"], final["status"]) == ("OP_INSTANCE_STARTUP", "error")
    assert final["result"][0] == "HooksAbort"
    assert "instance-start-pre.d/10-fail-if-flag" in json.dumps(final["result"])
    assert final["event_time"] == [1795254567, 191648]


def test_canceled_op_without_end_time_falls_back_to_the_job_end():
    msgs = replay(27)
    assert [m["status"] for m in msgs] == ["queued", "waiting", "canceling", "canceled"]
    assert msgs[-1]["event_time"] == [1795254603, 618549]  # op end is null; job end is not


def test_multi_op_job_reports_each_op_separately():
    msgs = replay(35)
    finals = [(m["opIndex"], m["operation"], m["status"]) for m in msgs if m["status"] == "success"]
    assert finals == [(0, "OP_INSTANCE_STARTUP", "success"), (1, "OP_INSTANCE_SHUTDOWN", "success")]
    assert all(m["instance"] == "inst4.ganeti.test" for m in msgs)


def test_network_ops_become_network_status_messages():
    add = replay(2)[-1]
    assert add["type"] == "ganeti-network-status"
    assert (add["network"], add["operation"], add["status"]) == ("testnet", "OP_NETWORK_ADD", "success")
    assert add["job_fields"]["subnet"] == "203.0.113.0/24"
    assert add["job_fields"]["add_reserved_ips"] == ["203.0.113.250"]
    failed = replay(5)  # prerequisites failed before the op ever ran
    assert [m["status"] for m in failed] == ["queued", "waiting", "error"]
    assert failed[-1]["result"][0] == "OpPrereqError"


def test_instance_tag_ops_are_instance_messages_and_cluster_ops_produce_nothing():
    assert replay(29)[-1]["instance"] == "inst1.ganeti.test"
    assert replay(29)[-1]["tags"] == ["env:test", "role:web"]
    for cluster_job in (1, 31, 34, 48, 50):  # post-init, cluster tags, modify, OS diagnose, verify-disks
        assert replay(cluster_job) == []


def test_event_time_falls_back_to_the_file_mtime_when_no_timestamp_is_set():
    doc = json.loads(job_versions(9)[0])
    doc["received_timestamp"] = None
    progress = advance(parse_job(json.dumps(doc).encode()), None, None, [123, 456])
    assert progress.new[0][1]["event_time"] == [123, 456]


def test_a_replayed_older_version_reports_nothing():
    versions = job_versions(9)
    first = advance(parse_job(versions[-1]), None, None, MTIME)
    again = advance(parse_job(versions[2]), first.reported, None, MTIME)
    assert again.new == [] and again.refreshed == [] and again.reported == first.reported


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b'{"id": 1, "ops": [', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"id": true, "ops": []}', "'id'"),
        (b'{"id": 3, "ops": []}', "'ops'"),
        (b'{"id": 3, "ops": [{"input": {}, "status": "success"}]}', "OP_ID"),
        (b'{"id": 3, "ops": [{"input": {"OP_ID": "X"}, "status": "done"}]}', "unknown status 'done'"),
        (
            b'{"id": 3, "ops": [{"input": {"OP_ID": "X"}, "status": "success", "end_timestamp": [1]}]}',
            "end_timestamp",
        ),
        (b"[" * 100000, "nested"),
    ],
)
def test_malformed_job_files_raise_a_specific_error(data, reason):
    with pytest.raises(JobParseError, match=reason):
        parse_job(data)


def test_truncated_recording_is_a_parse_error():
    data = job_versions(8)[-1]
    with pytest.raises(JobParseError, match="not JSON"):
        parse_job(data[: len(data) // 2])


def test_job_name_pattern_takes_final_names_only():
    assert jobqueue.job_id_from_name("job-10") == 10
    for temp in (
        "job-10-8331-37.tmp",
        "job-10kcr0djhg.new",
        "job-34y15sve2.new",
        "job-10\n",
        "serial",
        "job-",
    ):
        assert jobqueue.job_id_from_name(temp) is None


def mark(finished=True, received=0.0, error=None):
    return SimpleNamespace(finished=finished, received=received, error=error)


def test_hwm_passes_finished_jobs_and_stops_at_an_unfinished_one():
    marks = {11: mark(), 12: mark(), 13: mark(finished=False), 14: mark()}
    assert advance_hwm(10, marks, now=1000, grace=300) == 12


def test_hwm_passes_a_gap_only_once_the_next_job_is_old():
    assert advance_hwm(10, {12: mark(received=900)}, now=1000, grace=300) == 10  # 11 may still appear
    assert advance_hwm(10, {12: mark(received=600)}, now=1000, grace=300) == 12


def test_hwm_passes_an_unreadable_job_after_the_grace_period():
    bad = {11: mark(finished=False, received=900, error="not JSON")}
    assert advance_hwm(10, bad, now=1000, grace=300) == 10
    assert advance_hwm(10, bad, now=1300, grace=300) == 11
