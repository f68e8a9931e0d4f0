"""Reconciliation on a real Ganeti cluster: drift made behind Synnefo's back with `gnt-instance`
and with the rows, found exactly, then fixed so that a last pass finds nothing.

Six instances snfr-<id> (diskless, 1 vCPU, 64 MiB), each with a row that matches it, then:
A shut down, B resized to 2 vCPUs, C removed, D's row deleted, E's row set STOPPED while it runs,
F given a NIC (on Ganeti network snf-net-1, Synnefo's network 1) whose row Synnefo left in BUILD.
The seed's own VMs are moved to another backend: they are not on this cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sandbox import (
    GNT_TIMEOUT,
    SMALL_VM,
    add_args,
    add_ganeti_network,
    gnt,
    instance_status,
    remove_ganeti_networks,
    remove_instances,
    unused_ids,
)

from e2e.conftest import pass_config, reconciler

if TYPE_CHECKING:
    from e2e.conftest import Watcher

pytestmark = [pytest.mark.ganeti, pytest.mark.root]

PREFIX = "snfr-"
NETWORK = "snf-net-1"  # Synnefo's network 1 (203.0.113.0/24 in the seed) as Ganeti knows it
NIC_IP = "203.0.113.50"  # free in the seed's pool of network 1


def ensure_network(db) -> None:
    """Synnefo's network 1 on this cluster: in Ganeti, connected, and ACTIVE in its backend row."""
    add_ganeti_network(NETWORK, "203.0.113.0/24", "default", gateway="203.0.113.1")
    db.add_backend_network(1, "aa:00:00")


@pytest.fixture
def drifted(snf: Watcher, synnefo_db, tmp_path: Path):
    """The six VMs, in step first, then drifted; yields (ids by letter, run(*args) -> report)."""
    remove_instances(PREFIX)  # an interrupted session's
    db = synnefo_db
    ids = dict(zip("ABCDEF", unused_ids(PREFIX, 9400, 6), strict=True))
    db.seed_elsewhere()
    ensure_network(db)
    db.add_flavor(64, 1, 64, 1)
    db.add_flavor(65, 2, 64, 1)
    for vm in ids.values():
        db.add_vms(range(vm, vm + 1))
        gnt(*add_args(f"{PREFIX}{vm}", *SMALL_VM))
        gnt("gnt-instance", "startup", f"{PREFIX}{vm}")
    db.query(
        "UPDATE db_virtualmachine SET operstate = 'STARTED', flavor_id = 64, backend_id = 1 "
        "WHERE id = ANY(%s)",
        (list(ids.values()),),
    )

    config = pass_config(snf, db.dsn, tmp_path, PREFIX, metrics_file=None)

    run = reconciler(config)

    assert run()["findings"] == [], "the VMs must start in step with their rows"

    a, b, c, d, e, f = ids.values()
    gnt("gnt-instance", "shutdown", f"{PREFIX}{a}")
    gnt("gnt-instance", "modify", "-B", "vcpus=2", f"{PREFIX}{b}")
    gnt("gnt-instance", "remove", "-f", f"{PREFIX}{c}")
    db.query("UPDATE db_virtualmachine SET deleted = true, operstate = 'DESTROYED' WHERE id = %s", (d,))
    db.query("UPDATE db_virtualmachine SET operstate = 'STOPPED' WHERE id = %s", (e,))
    nic = f * 10
    db.query(
        'INSERT INTO db_networkinterface (id, name, userid, created, updated, "index", mac, '
        "firewall_profile, state, public, device_owner, machine_id, network_id) VALUES (%s, '', "
        "'c4b3a6f0-5e0d-4b7e-9d0a-2f1e3c4d5a01', now() - interval '1 hour', now() - interval '1 hour', 0, "
        "NULL, NULL, 'BUILD', true, 'vm', %s, 1)",
        (nic, f),
    )
    gnt(
        "gnt-instance", "modify", "--net", f"add:name=snf-nic-{nic},network={NETWORK},ip={NIC_IP}",
        f"{PREFIX}{f}",
    )  # fmt: skip
    try:
        yield ids, run
    finally:
        for vm in ids.values():
            gnt("gnt-instance", "remove", "-f", f"{PREFIX}{vm}", check=False)
        remove_ganeti_networks(NETWORK)  # the next tests' clusters have none


def kinds(report: dict) -> set[tuple[str, int]]:
    return {(f["kind"], f["id"]) for f in report["findings"]}


def test_drift_is_found_exactly_and_fixed_until_a_pass_finds_nothing(drifted, synnefo_db):
    ids, run = drifted
    a, b, c, d, e, f = ids.values()
    expected = {("operstate", a), ("flavor", b), ("stale", c), ("orphan", d), ("operstate", e), ("nics", f)}
    report = run()
    assert kinds(report) == expected, json.dumps(report["findings"], indent=1)
    assert {x["action"] for x in report["findings"]} == {"report"}  # detection only by default

    fixed = run("--fix-all")  # the detection pass was the first sighting of the destructive ones
    assert {(x["kind"], x["id"], x["action"]) for x in fixed["findings"]} == {
        (kind, vm, "fix") for kind, vm in expected
    }
    job = fixed["jobs"][f"{PREFIX}{d}"]
    deadline = time.monotonic() + GNT_TIMEOUT
    while instance_status(f"{PREFIX}{d}") != "gone":
        assert time.monotonic() < deadline, f"orphan removal job {job} did not finish"
        time.sleep(0.5)

    assert run("--fix-all")["findings"] == []
    rows = dict(
        (vm, (state, flavor, deleted))
        for vm, state, flavor, deleted in synnefo_db.query(
            "SELECT id, operstate, flavor_id, deleted FROM db_virtualmachine WHERE id = ANY(%s)",
            (list(ids.values()),),
        )
    )
    assert rows[a] == ("STOPPED", 64, False)
    assert rows[b] == ("STARTED", 65, False)
    assert rows[c] == ("DESTROYED", 64, True)
    assert rows[e] == ("STARTED", 64, False)
    (nic,) = synnefo_db.query(
        "SELECT n.state, n.mac, ip.address FROM db_networkinterface n "
        "JOIN db_ipaddress ip ON ip.nic_id = n.id AND NOT ip.deleted WHERE n.machine_id = %s",
        (f,),
    )
    ganeti_mac = gnt("gnt-instance", "list", "--no-headers", "-o", "nic.macs", f"{PREFIX}{f}").stdout.strip()
    assert nic == ("ACTIVE", ganeti_mac, NIC_IP)
