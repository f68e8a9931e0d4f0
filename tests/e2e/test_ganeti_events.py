"""What a real Ganeti 3.0.2 cluster's operations leave in the outbox.

Each test drives its own instance (snf-90xx) with the real `gnt-instance`
command, from the host namespace, and checks what the delivery side would read:
`Outbox.pending()` (and `snf-watcher outbox --json`). The daemon and the hooks
work asynchronously, so every check polls for up to SNF_E2E_WAIT seconds.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from sandbox import BRIDGE, CLUSTER, FINAL, NODE, add_args

if TYPE_CHECKING:
    from sandbox import GntResult

    from e2e.conftest import Watcher

pytestmark = [pytest.mark.ganeti, pytest.mark.root]


MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
RANK = {"queued": 0, "waiting": 1, "canceling": 2, "running": 3, "success": 4, "error": 4, "canceled": 4}


def add_instance(snf: Watcher, name: str, ip: str) -> GntResult:
    return snf.gnt(*add_args(name, "--net", f"0:ip={ip},link={BRIDGE}", "-B", "memory=64M"))


def check_op_messages(
    snf: Watcher, job: GntResult, *, instance: str, operation: str, final: str
) -> dict[str, Any]:
    """Wait for the job's final status and check its whole story; return the final message."""
    assert job.job_id is not None
    msgs = snf.wait_final(job.job_id)
    statuses = [m["status"] for m in msgs]
    assert statuses[-1] == final, f"job {job.job_id}: statuses {statuses}, expected to end in {final}"
    assert [RANK[s] for s in statuses] == sorted(set(RANK[s] for s in statuses)), (
        f"job {job.job_id}: statuses {statuses} are not a forward progression without repeats"
    )
    for m in msgs:
        assert m["type"] == "ganeti-op-status"
        assert m["instance"] == instance
        assert m["operation"] == operation
        assert m["cluster"] == CLUSTER
        assert m["jobId"] == job.job_id and m["opIndex"] == 0
        assert isinstance(m["event_time"], list) and len(m["event_time"]) == 2
    every_op = [
        m for m in snf.messages("ganeti-op-status") if m["jobId"] == job.job_id and m["status"] in FINAL
    ]
    assert len(every_op) == 1, f"job {job.job_id}: {len(every_op)} final statuses: {every_op}"
    return msgs[-1]


def check_nic(nic: dict[str, Any], index: int, ip: str) -> None:
    assert nic["index"] == index
    assert nic["ip"] == ip
    assert MAC.match(nic["mac"] or ""), f"not a MAC: {nic['mac']!r}"
    assert nic["link"] == BRIDGE
    assert nic["mode"] == "bridged"
    assert nic["uuid"]


def ganeti_macs(snf: Watcher, instance: str) -> list[str]:
    ((macs,),) = snf.gnt_list("gnt-instance", "-o", "nic.macs", instance)
    return macs.split(",") if macs else []


# ---------------------------------------------------------------- the tests


def check_started(snf: Watcher, job: GntResult, name: str, ip: str) -> None:
    """A successful start: its op statuses, and one report of the instance's single NIC."""
    check_op_messages(snf, job, instance=name, operation="OP_INSTANCE_STARTUP", final="success")
    (net,) = snf.wait_net_status(name, "instance-start")
    assert net["operation"] == "OP_INSTANCE_STARTUP"
    (nic,) = net["nics"]
    check_nic(nic, 0, ip)


def test_instance_add(snf: Watcher) -> None:
    name, ip = "snf-9001", "198.51.100.41"
    job = add_instance(snf, name, ip)

    final = check_op_messages(snf, job, instance=name, operation="OP_INSTANCE_CREATE", final="success")
    fields = final["job_fields"]
    assert [(n.get("ip"), n.get("link")) for n in fields["nics"]] == [(ip, BRIDGE)]
    memory = fields["beparams"].get("maxmem", fields["beparams"].get("memory"))
    assert memory == 64, f"beparams: {fields['beparams']}"
    assert "disks" in fields and "hvparams" in fields
    assert final["result"] == [NODE]

    (net,) = snf.wait_net_status(name, "instance-add")
    assert net["operation"] == "OP_INSTANCE_CREATE"
    assert net["cluster"] == CLUSTER
    (nic,) = net["nics"]
    check_nic(nic, 0, ip)
    assert [nic["mac"]] == ganeti_macs(snf, name)


def test_startup_reboot_shutdown(snf: Watcher) -> None:
    name, ip = "snf-9002", "198.51.100.51"
    add_instance(snf, name, ip)
    snf.wait_net_status(name, "instance-add")

    check_started(snf, snf.gnt("gnt-instance", "startup", name), name, ip)

    reboot = snf.gnt("gnt-instance", "reboot", name)
    check_op_messages(snf, reboot, instance=name, operation="OP_INSTANCE_REBOOT", final="success")
    (net,) = snf.wait_net_status(name, "instance-reboot")
    assert net["operation"] == "OP_INSTANCE_REBOOT"
    check_nic(net["nics"][0], 0, ip)

    stop = snf.gnt("gnt-instance", "shutdown", "--timeout=0", name)
    check_op_messages(snf, stop, instance=name, operation="OP_INSTANCE_SHUTDOWN", final="success")
    assert snf.gnt_list("gnt-instance", "-o", "status", name) == [["ADMIN_down"]]

    # instance-stop is no hook of ours: a shutdown changes no NIC
    snf.wait_spool_empty()
    hooks = sorted(m["hook"] for m in snf.net_statuses(name))
    assert hooks == ["instance-add", "instance-reboot", "instance-start"]


def test_modify_adds_a_nic(snf: Watcher) -> None:
    name = "snf-9003"
    add_instance(snf, name, "198.51.100.43")

    job = snf.gnt("gnt-instance", "modify", "--net", f"add:ip=198.51.100.42,link={BRIDGE}", name)
    final = check_op_messages(snf, job, instance=name, operation="OP_INSTANCE_SET_PARAMS", final="success")
    ((action, _where, params),) = final["job_fields"]["nics"]
    assert action == "add" and params["ip"] == "198.51.100.42"

    (net,) = snf.wait_net_status(name, "instance-modify")
    assert net["operation"] == "OP_INSTANCE_SET_PARAMS"
    assert len(net["nics"]) == 2
    check_nic(net["nics"][0], 0, "198.51.100.43")
    check_nic(net["nics"][1], 1, "198.51.100.42")
    assert [n["mac"] for n in net["nics"]] == ganeti_macs(snf, name)
    # Ganeti's own account of the change names the same new NIC
    assert net["nics"][1]["mac"] in json.dumps(final["result"])


def test_start_vetoed_by_a_pre_hook(snf: Watcher, start_veto: Any) -> None:
    name, ip = "snf-9004", "198.51.100.44"
    add_instance(snf, name, ip)
    snf.wait_net_status(name, "instance-add")

    with start_veto():
        failed = snf.gnt("gnt-instance", "startup", name, expect_ok=False)
    final = check_op_messages(snf, failed, instance=name, operation="OP_INSTANCE_STARTUP", final="error")
    assert final["result"][0] == "HooksAbort", f"result: {final['result']}"
    assert "vetoed by the snf-watcher e2e tests" in json.dumps(final["result"])

    # post hooks do not run after a failure: nothing about NICs
    snf.wait_spool_empty()
    assert snf.net_statuses(name, "instance-start") == []

    # without the veto the same start works and reports the NICs once
    check_started(snf, snf.gnt("gnt-instance", "startup", name), name, ip)


def test_instance_remove(snf: Watcher) -> None:
    name = "snf-9005"
    add_instance(snf, name, "198.51.100.45")
    snf.wait_net_status(name, "instance-add")

    job = snf.gnt("gnt-instance", "remove", "-f", name)
    check_op_messages(snf, job, instance=name, operation="OP_INSTANCE_REMOVE", final="success")
    (net,) = snf.wait_net_status(name, "instance-remove")
    assert net["operation"] == "OP_INSTANCE_REMOVE"
    assert net["nics"] == []
    assert [name] not in snf.gnt_list("gnt-instance", "-o", "name")


def test_restarted_daemon_catches_up(snf: Watcher) -> None:
    """Jobs and hooks that run while the daemon is down are reported once it is back."""
    name, ip = "snf-9006", "198.51.100.46"
    add_instance(snf, name, ip)
    snf.wait_net_status(name, "instance-add")

    snf.stop_eventd()
    try:
        start = snf.gnt("gnt-instance", "startup", name)
        assert snf.spooled(), "the start hook's message should wait in the spool"
    finally:
        snf.start_eventd()
    check_started(snf, start, name, ip)


def test_every_final_status_exactly_once(snf: Watcher) -> None:
    """Over the whole session: one final status per (job, op), and it is Ganeti's."""
    # a little traffic of its own, so that this test means something when run alone
    name = "snf-9007"
    add_instance(snf, name, "198.51.100.47")
    snf.gnt("gnt-instance", "startup", name)
    snf.gnt("gnt-instance", "remove", "-f", name)

    for job in snf.jobs:
        assert job.job_id is not None
        snf.wait_final(job.job_id)
    snf.wait_spool_empty()
    entries = snf.entries()
    ops = [e.message for e in entries if e.kind == "ganeti-op-status"]

    finals = Counter((m["jobId"], m["opIndex"]) for m in ops if m["status"] in FINAL)
    repeated = {k: n for k, n in finals.items() if n != 1}
    assert not repeated, f"final statuses reported more than once (job, op): count {repeated}"
    statuses = Counter((m["jobId"], m["opIndex"], m["status"]) for m in ops)
    assert max(statuses.values()) == 1, f"repeated statuses: {[k for k, n in statuses.items() if n > 1]}"

    ganeti = {int(job_id): status for job_id, status in snf.gnt_list("gnt-job", "-o", "id,status")}
    reported = {m["jobId"]: m["status"] for m in ops if m["status"] in FINAL}
    for job in snf.jobs:
        assert reported.get(job.job_id) == ganeti[job.job_id], f"job {job.job_id}: {job.argv}"
    # and no job the daemon saw has an unfinished story in the outbox
    assert set(reported) == {m["jobId"] for m in ops}

    # `snf-watcher outbox --json` shows the operator the same thing
    shown = snf.cli_outbox()
    assert [r["key"] for r in shown if r["where"] == "outbox"] == [e.key for e in entries]
    assert [r for r in shown if r["where"] == "spool"] == []

    # nothing went wrong on the way
    assert snf.hook_log.read_text() == "", f"snf-ganeti-hook complained:\n{snf.hook_log.read_text()}"
    problems = [
        line
        for line in snf.eventd_log.read_text(errors="replace").splitlines()
        if ": WARNING:" in line or ": ERROR:" in line or "Traceback" in line
    ]
    assert problems == [], "snf-ganeti-eventd logged problems:\n" + "\n".join(problems)
