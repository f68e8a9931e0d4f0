"""Network and IP pool reconciliation on a real Ganeti cluster: drift made behind Synnefo's back
with `gnt-network` and with the rows, found exactly, fixed through RAPI jobs and corrections, until
a last pass finds nothing.

In step first: Synnefo's networks 1 (public, 203.0.113.0/24), 2 (private, 192.168.10.0/24) and
N (no subnet) are in Ganeti, connected to the node group, ACTIVE in their backend rows. Then:
network 1's row is set PENDING (unsynced), network 2 is removed from Ganeti (missing), N is
disconnected from the node group (groups), network M, being destroyed and without a Ganeti
network, gets an ACTIVE backend row (stale), a Ganeti network snf-net-ORPHAN appears without any
row (orphan), and pool 1 hands out 203.0.113.10, which a floating IP holds (pool)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sandbox import add_ganeti_network, ganeti_networks, gnt, remove_ganeti_networks, wait_jobs

from e2e.conftest import pass_config, reconciler
from snf_watcher import ippool

if TYPE_CHECKING:
    from e2e.conftest import Watcher

pytestmark = [pytest.mark.ganeti, pytest.mark.root]

PREFIX = "snfn-"  # no instances here: the seed's VMs are on another backend
N, M, ORPHAN = 3, 4, 9470  # Synnefo's networks N and M; ORPHAN has no row at all
POOL_1 = ippool.Pool(
    1,
    "D3////////////////////////////////////////g=",
    "//////////////////////////////////////////g=",
    253,
    "203.0.113.0/24",
    2,
)


def add_network(db, net_id: int, action: str | None = None) -> None:
    """A private network without subnets, and its backend row on this cluster, ACTIVE."""
    db.query(
        "INSERT INTO db_network (id, name, userid, project, shared_to_project, flavor, mode, link, "
        "mac_prefix, tags, public, created, updated, deleted, state, action, drained, floating_ip_pool, "
        "external_router, subnet_ids) VALUES (%s, %s, NULL, NULL, false, 'MAC_FILTERED', 'bridged', "
        "'gnt-br0', %s, NULL, false, now(), now(), false, 'ACTIVE', %s, false, false, false, '')",
        (net_id, f"e2e-{net_id}", f"aa:00:{net_id}", action),
    )
    backend_row(db, net_id, f"aa:00:{net_id}0")


def backend_row(db, net_id: int, mac_prefix: str) -> None:
    """An hour old: a younger row without a job may be one whose create job Synnefo is submitting."""
    db.query(
        "INSERT INTO db_backendnetwork (created, updated, deleted, mac_prefix, operstate, backendtime, "
        "backend_id, network_id) VALUES (now() - interval '1 hour', now() - interval '1 hour', false, %s, "
        "'ACTIVE', now() - interval '1 hour', 1, %s)",
        (mac_prefix, net_id),
    )


@pytest.fixture
def drifted(snf: Watcher, synnefo_db, tmp_path: Path):
    """The networks in step first, then drifted; yields run(*args) -> report."""
    remove_ganeti_networks("snf-net-")  # an interrupted session's
    db = synnefo_db
    db.seed_elsewhere()
    backend_row(db, 1, "aa:00:00")
    backend_row(db, 2, "aa:00:10")
    add_network(db, N)
    add_ganeti_network("snf-net-1", "203.0.113.0/24", "default", gateway="203.0.113.1")
    add_ganeti_network("snf-net-2", "192.168.10.0/24", "default")
    add_ganeti_network(f"snf-net-{N}", "10.0.0.0/29", "default")
    config = pass_config(snf, db.dsn, tmp_path, PREFIX, metrics_file=None)

    run = reconciler(config)

    try:
        first = run()
        assert first["findings"] == [], json.dumps(first["findings"], indent=1)
        add_network(db, M, action="DESTROY")  # whose Ganeti network is gone already
        db.query("UPDATE db_backendnetwork SET operstate = 'PENDING' WHERE backend_id = 1 AND network_id = 1")
        remove_ganeti_networks("snf-net-2")
        gnt("gnt-network", "disconnect", f"snf-net-{N}", "default")
        add_ganeti_network(f"snf-net-{ORPHAN}", "10.99.0.0/24", "default")
        freed = ippool.release(POOL_1, "203.0.113.10").available_map
        db.query("UPDATE db_ippooltable SET available_map = %s WHERE id = 1", (freed,))
        yield run
    finally:
        remove_ganeti_networks("snf-net-")  # the next tests' clusters have none


def findings(report: dict) -> set[tuple[str, int]]:
    return {(f["kind"], f["id"]) for f in report["findings"]}


def test_network_drift_is_found_exactly_and_fixed_until_a_pass_finds_nothing(drifted, synnefo_db):
    run = drifted
    expected = {
        ("network-unsynced", 1),
        ("network-missing", 2),
        ("network-groups", N),
        ("network-stale", M),
        ("network-orphan", ORPHAN),
        ("pool", 1),
    }
    report = run()
    assert findings(report) == expected, json.dumps(report["findings"], indent=1)
    assert {f["action"] for f in report["findings"]} == {"report"}  # detection only by default
    (pool,) = [f for f in report["findings"] if f["kind"] == "pool"]
    assert "1 in use but free: 203.0.113.10" in pool["database"]

    fixed = run("--fix-all")  # the detection pass was the orphan's first sighting
    assert {(f["kind"], f["id"], f["action"]) for f in fixed["findings"]} == {
        (kind, i, "fix") for kind, i in expected
    }, json.dumps(fixed["findings"], indent=1)
    assert all(f["severity"] == 1 for f in fixed["findings"]), json.dumps(fixed["findings"], indent=1)
    jobs = [int(j) for f in fixed["findings"] if "Ganeti jobs" in f["text"] for j in _jobs(f["text"])]
    assert len(jobs) == 5  # create + connect snf-net-2, connect N, disconnect + remove ORPHAN
    assert set(wait_jobs(jobs).values()) == {"success"}  # the dependent jobs ran after their parents

    assert run()["findings"] == []
    networks = ganeti_networks()
    assert networks["snf-net-2"] == ["default"] and networks[f"snf-net-{N}"] == ["default"]
    assert f"snf-net-{ORPHAN}" not in networks
    rows = dict(
        synnefo_db.query(
            "SELECT network_id, operstate || ' ' || deleted FROM db_backendnetwork WHERE backend_id = 1"
        )
    )
    assert rows == {1: "ACTIVE false", 2: "ACTIVE false", N: "ACTIVE false", M: "DELETED true"}
    ((available,),) = synnefo_db.query("SELECT available_map FROM db_ippooltable WHERE id = 1")
    assert available == POOL_1.available_map
    created = gnt("gnt-network", "info", "snf-net-2").stdout
    assert "192.168.10.0/24" in created and "aa:00:10" in created, created


def _jobs(text: str) -> list[str]:
    return text.rsplit("Ganeti jobs ", 1)[1].split(", ")
