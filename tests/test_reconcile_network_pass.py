"""`snf-watcher reconcile` of networks and IP pools against the fake HTTPS ganeti-rapi and a real
PostgreSQL with the seed: what the operator reads in the report, the rows the fixes write, and the
jobs they submit through RAPI (with their JSON bodies and job dependencies).

Seed: networks 1 (public "Internet", bridged br0, subnet 11 203.0.113.0/24 gateway .1) and 2
(private "alice-private", bridged prv0, tags "private-filtered", subnet 12 192.168.10.0/24 with
DHCP), each with an ACTIVE db_backendnetwork row on backend 1 (index 0): 1 for network 1, 2 for
network 2 (mac prefix aa:00:10). Pool 1 covers 203.0.113.2-.254 (used: .2 .3 .4 .5 and the
floating .10), pool 2 192.168.10.1-.254 (used: .1). watcher_pass.networks() is Ganeti's side of
the same, connected to the one node group "default"; the watch fixture's instances give no VM
drift, so every finding below is about a network or a pool.
"""

from __future__ import annotations

import base64
import copy
import json

from rapi_server import RAPI_FIXTURES
from watcher_pass import NETWORKS, findings, networks, reconcile

from snf_watcher import config, ippool
from snf_watcher.syncdb import Database

GROUPS = "/2/groups?bulk=1"
POOL_COLUMNS = 'id, available_map, reserved_map, size, base, "offset"'


def backend_network(db, network_id: int) -> tuple:
    return db.one(
        "SELECT id, operstate, deleted FROM db_backendnetwork WHERE backend_id = 1 AND network_id = %s",
        (network_id,),
    )


def pool(db, pool_id: int) -> ippool.Pool:
    return ippool.Pool(*db.one(f"SELECT {POOL_COLUMNS} FROM db_ippooltable WHERE id = %s", (pool_id,)))


def set_pool(db, p: ippool.Pool) -> None:
    db.query(
        "UPDATE db_ippooltable SET available_map = %s, reserved_map = %s WHERE id = %s",
        (p.available_map, p.reserved_map, p.id),
    )


def writes(rapi_server) -> list[tuple[str, str]]:
    """Every request that would change Ganeti: (method, path)."""
    return [(r.method, r.path) for r in rapi_server.requests if r.method != "GET"]


def two_groups() -> list[dict]:
    """The recorded node group "default" and a copy of it named "rack2"."""
    (default,) = json.loads((RAPI_FIXTURES / "groups-bulk.json").read_text())
    rack2 = copy.deepcopy(default) | {"name": "rack2", "uuid": "rack2-uuid", "node_list": ["node2.test"]}
    return [default, rack2]


# ---------------------------------------------------------------- in step


def test_the_seed_and_its_networks_are_in_step(watch, rapi_server, synnefo_db):
    code, report = reconcile(watch, "--fix-all")
    assert (code, report["findings"], report["problems"]) == (0, [], [])
    assert (report["checked_networks"], report["checked_pools"]) == (2, 2)
    assert "2 networks, 2 IP pools: no drift" in report["summary"]
    assert writes(rapi_server) == []
    assert [backend_network(synnefo_db, n) for n in (1, 2)] == [(1, "ACTIVE", False), (2, "ACTIVE", False)]


# ---------------------------------------------------------------- network-unsynced


def test_a_pending_backend_network_that_ganeti_has_is_marked_active(watch, rapi_server, synnefo_db):
    synnefo_db.query("UPDATE db_backendnetwork SET operstate = 'PENDING' WHERE id = 2")
    code, report = reconcile(watch)
    assert (code, findings(report)) == (1, [("network-unsynced", 2, "report")])
    (f,) = report["findings"]
    assert (f["subject"], f["name"]) == ("network", "snf-net-2")
    assert (f["ganeti"], f["database"]) == ("connected to every node group", "backend network 2 PENDING")
    assert f["text"] == "not fixed (--fix-network-unsynced would mark the backend network ACTIVE)"
    assert backend_network(synnefo_db, 2) == (2, "PENDING", False)  # reported only: no --fix-*

    code, report = reconcile(watch, "--fix-network-unsynced")
    assert findings(report) == [("network-unsynced", 2, "fix")]
    assert report["findings"][0]["text"] == "mark the backend network ACTIVE (fix 1 of 2)"
    assert backend_network(synnefo_db, 2) == (2, "ACTIVE", False)
    assert writes(rapi_server) == []
    code, report = reconcile(watch, "--fix-all")
    assert (code, report["findings"]) == (0, [])


def test_a_missing_backend_network_row_is_created_active(watch, rapi_server, synnefo_db):
    synnefo_db.query("DELETE FROM db_backendnetwork WHERE id = 2")
    code, report = reconcile(watch)
    assert findings(report) == [("network-unsynced", 2, "report")]
    (f,) = report["findings"]
    assert f["database"] == "no backend network row"
    assert report["checked_pools"] == 1  # pool 2 belongs to a network without a row here

    code, report = reconcile(watch, "--fix-network-unsynced")
    assert findings(report) == [("network-unsynced", 2, "fix")]
    assert synnefo_db.query(
        "SELECT backend_id, network_id, mac_prefix, operstate, deleted FROM db_backendnetwork "
        "WHERE network_id = 2"
    ) == [(1, 2, "aa:00:10", "ACTIVE", False)]  # network 2's mac prefix and backend 1's index (0)
    code, report = reconcile(watch, "--fix-all")
    assert (code, report["findings"], report["checked_pools"]) == (0, [], 2)


def test_a_deleted_backend_network_row_of_a_network_ganeti_has_is_reported_not_fixed(
    watch, rapi_server, synnefo_db
):
    synnefo_db.query("UPDATE db_backendnetwork SET deleted = true WHERE id = 2")
    code, report = reconcile(watch, "--fix-all")
    assert findings(report) == [("network-unsynced", 2, "report")]
    (f,) = report["findings"]
    assert f["database"] == "backend network 2 ACTIVE"
    assert f["text"] == "cannot be fixed now: its backend network row is deleted"
    assert backend_network(synnefo_db, 2) == (2, "ACTIVE", True)
    assert writes(rapi_server) == []


# ---------------------------------------------------------------- network-stale


def test_a_destroyed_network_gone_from_ganeti_has_its_backend_row_deleted(watch, rapi_server, synnefo_db):
    rapi_server.set_body(NETWORKS, [n for n in networks() if n["name"] != "snf-net-2"])
    synnefo_db.query("UPDATE db_network SET action = 'DESTROY' WHERE id = 2")
    code, report = reconcile(watch)
    assert findings(report) == [("network-stale", 2, "report")]
    (f,) = report["findings"]
    assert (f["ganeti"], f["database"]) == ("no network", "backend network 2 ACTIVE")
    assert f["text"] == "not fixed (--fix-network-stale would mark the backend network DELETED)"

    code, report = reconcile(watch, "--fix-network-stale")
    assert findings(report) == [("network-stale", 2, "fix")]  # not destructive: no second sighting
    assert backend_network(synnefo_db, 2) == (2, "DELETED", True)
    assert writes(rapi_server) == []
    code, report = reconcile(watch, "--fix-all")
    assert (code, report["findings"]) == (0, [])
    assert report["checked_pools"] == 1  # a deleted backend network's pool is no longer this backend's


# ---------------------------------------------------------------- network-missing


def test_a_wanted_network_ganeti_lacks_is_created_then_connected(watch, rapi_server, synnefo_db):
    rapi_server.set_body(NETWORKS, [n for n in networks() if n["name"] != "snf-net-2"])
    rapi_server.set_body("/2/networks", 901, method="POST")
    rapi_server.set_body("/2/networks/snf-net-2/connect", 902, method="PUT")
    code, report = reconcile(watch)
    assert findings(report) == [("network-missing", 2, "report")]
    (f,) = report["findings"]
    assert (f["ganeti"], f["database"]) == ("no network", "backend network 2 ACTIVE")
    assert f["text"] == (
        "not fixed (--fix-network-missing would create it in Ganeti and connect it to every node group)"
    )
    assert writes(rapi_server) == []

    code, report = reconcile(watch, "--fix-network-missing")
    assert findings(report) == [("network-missing", 2, "fix")]
    assert report["findings"][0]["text"] == (
        "create it in Ganeti and connect it to every node group (fix 1 of 2): Ganeti jobs 901, 902"
    )
    assert report["jobs"] == {"snf-net-2": 902}
    assert writes(rapi_server) == [("POST", "/2/networks"), ("PUT", "/2/networks/snf-net-2/connect")]
    (create,) = rapi_server.seen("/2/networks", "POST")
    assert json.loads(create.body) == {
        "network_name": "snf-net-2",
        "network": "192.168.10.0/24",  # subnet 12 has no gateway: none is sent
        "mac_prefix": "aa:00:10",
        "conflicts_check": False,  # a private network
        "tags": ["private-filtered", "nfdhcpd", "private"],
    }
    assert create.query["reason"] == ["snf-watcher: reconcile: network-missing (backend network 2 ACTIVE)"]
    (connect,) = rapi_server.seen("/2/networks/snf-net-2/connect", "PUT")
    assert json.loads(connect.body) == {
        "group_name": "default",
        "network_mode": "bridged",
        "network_link": "prv0",
        "conflicts_check": False,
        "depends": [[901, ["success"]]],
    }
    assert backend_network(synnefo_db, 2) == (2, "ACTIVE", False)

    rapi_server.set_body(NETWORKS, networks())  # the jobs worked: the next pass sees the network
    code, report = reconcile(watch, "--fix-all")
    assert (code, report["findings"]) == (0, [])
    assert len(rapi_server.seen("/2/networks", "POST")) == 1


def test_a_missing_network_without_a_link_is_reported_and_not_created(watch, rapi_server, synnefo_db):
    rapi_server.set_body(NETWORKS, [n for n in networks() if n["name"] != "snf-net-2"])
    rapi_server.set_body("/2/networks", 901, method="POST")
    synnefo_db.query("UPDATE db_network SET link = NULL WHERE id = 2")
    for _ in range(2):
        code, report = reconcile(watch, "--fix-network-missing")
        assert findings(report) == [("network-missing", 2, "report")]
        assert report["findings"][0]["text"] == (
            "cannot be fixed now: network 2 has no mode or link to connect it with"
        )
    assert writes(rapi_server) == []  # a network Ganeti could not connect is not created either


# ---------------------------------------------------------------- network-groups


def test_a_network_missing_a_node_group_is_connected_to_it(watch, rapi_server, synnefo_db):
    rapi_server.set_body(GROUPS, two_groups())
    rapi_server.set_body(NETWORKS, networks(groups={1: ["default"], 2: ["default", "rack2"]}))
    rapi_server.set_body("/2/networks/snf-net-1/connect", 905, method="PUT")
    code, report = reconcile(watch, "--fix-network-groups")
    assert findings(report) == [("network-groups", 1, "fix")]
    (f,) = report["findings"]
    assert (f["name"], f["ganeti"], f["database"]) == (
        "snf-net-1",
        "connected to default",
        "bridged br0 on every node group",
    )
    assert f["text"] == "connect it to rack2 (fix 1 of 2): Ganeti jobs 905"
    assert report["jobs"] == {"snf-net-1": 905}
    assert writes(rapi_server) == [("PUT", "/2/networks/snf-net-1/connect")]
    (connect,) = rapi_server.seen("/2/networks/snf-net-1/connect", "PUT")
    assert json.loads(connect.body) == {
        "group_name": "rack2",
        "network_mode": "bridged",
        "network_link": "br0",
        "conflicts_check": True,  # a public network with IPv4
    }
    reason = "snf-watcher: reconcile: network-groups (bridged br0 on every node group)"
    assert connect.query["reason"] == [reason]


# ---------------------------------------------------------------- network-orphan


def orphan_77(inst_list: list[str]) -> list[dict]:
    """The seed's networks on both node groups, and snf-net-77, which has no db_network row."""
    body = networks(groups={1: ["default", "rack2"], 2: ["default", "rack2"]})
    body.append(
        {
            **body[0],
            "name": "snf-net-77",
            "network": "198.51.100.0/24",
            "external_reservations": "",
            "inst_list": inst_list,
        }
    )
    return body


def test_an_orphan_network_is_disconnected_and_removed_after_two_sightings(watch, rapi_server, synnefo_db):
    rapi_server.set_body(GROUPS, two_groups())
    rapi_server.set_body(NETWORKS, orphan_77([]))
    rapi_server.set_body("/2/networks/snf-net-77/disconnect", 906, method="PUT")
    rapi_server.set_body("/2/networks/snf-net-77", 907, method="DELETE")
    code, report = reconcile(watch, "--fix-network-orphan")
    assert findings(report) == [("network-orphan", 77, "confirm")]
    (f,) = report["findings"]
    assert (f["subject"], f["name"]) == ("network", "snf-net-77")
    assert f["ganeti"] == "network 198.51.100.0/24, groups default, rack2"
    assert f["database"] == "no network row"
    assert f["text"] == (
        "seen once: will disconnect it from its node groups and remove it through RAPI "
        "if the next pass sees it too"
    )
    assert writes(rapi_server) == []

    code, report = reconcile(watch, "--fix-network-orphan")
    assert findings(report) == [("network-orphan", 77, "fix")]
    assert report["findings"][0]["text"].endswith(": Ganeti jobs 906, 906, 907")
    assert report["jobs"] == {"snf-net-77": 907}
    assert writes(rapi_server) == [
        ("PUT", "/2/networks/snf-net-77/disconnect"),
        ("PUT", "/2/networks/snf-net-77/disconnect"),
        ("DELETE", "/2/networks/snf-net-77"),
    ]
    disconnects = rapi_server.seen("/2/networks/snf-net-77/disconnect", "PUT")
    assert [json.loads(d.body) for d in disconnects] == [{"group_name": "default"}, {"group_name": "rack2"}]
    (remove,) = rapi_server.seen("/2/networks/snf-net-77", "DELETE")
    # the fake server answers every disconnect with job 906: one dependency per disconnect job
    assert json.loads(remove.body) == {"depends": [[906, ["success"]], [906, ["success"]]]}
    assert remove.query["reason"] == ["snf-watcher: reconcile: network-orphan (no network row)"]


def test_a_removed_orphan_network_that_comes_back_needs_two_sightings_again(watch, rapi_server, synnefo_db):
    rapi_server.set_body(GROUPS, two_groups())
    rapi_server.set_body(NETWORKS, orphan_77([]))
    rapi_server.set_body("/2/networks/snf-net-77/disconnect", 906, method="PUT")
    rapi_server.set_body("/2/networks/snf-net-77", 907, method="DELETE")
    assert findings(reconcile(watch, "--fix-network-orphan")[1]) == [("network-orphan", 77, "confirm")]
    assert findings(reconcile(watch, "--fix-network-orphan")[1]) == [("network-orphan", 77, "fix")]
    rapi_server.set_body(NETWORKS, orphan_77([])[:2])  # the jobs worked: snf-net-77 is gone
    assert reconcile(watch, "--fix-network-orphan")[1]["findings"] == []
    assert "network-orphan:77" not in json.loads(watch.state_file.read_text()).get("findings", {})
    rapi_server.set_body(NETWORKS, orphan_77([]))  # someone makes a snf-net-77 again
    assert findings(reconcile(watch, "--fix-network-orphan")[1]) == [("network-orphan", 77, "confirm")]
    assert len(rapi_server.seen("/2/networks/snf-net-77", "DELETE")) == 1


def test_an_orphan_network_with_instances_on_it_is_only_reported(watch, rapi_server, synnefo_db):
    rapi_server.set_body(GROUPS, two_groups())
    rapi_server.set_body(NETWORKS, orphan_77(["inst1.ganeti.test"]))
    for _ in range(2):  # not even a confirmation: nothing can be done while instances use it
        code, report = reconcile(watch, "--fix-network-orphan")
        assert findings(report) == [("network-orphan", 77, "report")]
        (f,) = report["findings"]
        assert f["text"].startswith("cannot be fixed now:")
        assert f["text"] == "cannot be fixed now: 1 instances still have a NIC on it: inst1.ganeti.test"
    assert writes(rapi_server) == []


# ---------------------------------------------------------------- pools


def test_an_address_in_use_but_free_in_its_pool_is_taken_again(watch, rapi_server, synnefo_db):
    seed = pool(synnefo_db, 1)
    set_pool(synnefo_db, ippool.release(seed, "203.0.113.10"))  # the floating IP's bit freed
    code, report = reconcile(watch)
    assert findings(report) == [("pool", 1, "report")]
    (f,) = report["findings"]
    assert (f["subject"], f["name"]) == ("pool", "pool 1 (203.0.113.0/24, network 1)")
    assert f["database"] == "1 in use but free: 203.0.113.10"
    assert f["ganeti"] == "reserves 203.0.113.0, 203.0.113.1, 203.0.113.255"
    assert f["text"] == "not fixed (--fix-pool would rebuild the pool's maps from the addresses in use)"
    assert pool(synnefo_db, 1) != seed

    code, report = reconcile(watch, "--fix-pool")
    assert findings(report) == [("pool", 1, "fix")]
    assert report["findings"][0]["text"] == "rebuild the pool's maps from the addresses in use (fix 1 of 2)"
    assert pool(synnefo_db, 1) == seed
    assert reconcile(watch, "--fix-all")[1]["findings"] == []


def test_an_address_taken_in_its_pool_without_a_row_is_given_back(watch, rapi_server, synnefo_db):
    seed = pool(synnefo_db, 1)
    set_pool(synnefo_db, ippool.reserve(seed, "203.0.113.20"))  # leaked: no db_ipaddress row holds it
    code, report = reconcile(watch, "--fix-pool")
    assert findings(report) == [("pool", 1, "fix")]
    assert report["findings"][0]["database"] == "1 taken but unused: 203.0.113.20"
    assert pool(synnefo_db, 1) == seed
    assert ippool.is_free(pool(synnefo_db, 1), "203.0.113.20")
    assert reconcile(watch, "--fix-all")[1]["findings"] == []


def test_an_address_ganeti_reserves_is_kept_out_of_the_pool(watch, rapi_server, synnefo_db):
    seed = pool(synnefo_db, 1)
    rapi_server.set_body(NETWORKS, networks(net1="203.0.113.0, 203.0.113.1, 203.0.113.250, 203.0.113.255"))
    code, report = reconcile(watch, "--fix-pool")
    assert findings(report) == [("pool", 1, "fix")]
    (f,) = report["findings"]
    assert f["database"] == "1 reserved in Ganeti but free: 203.0.113.250"
    assert f["ganeti"] == "reserves 203.0.113.0, 203.0.113.1, 203.0.113.250, 203.0.113.255"
    fixed = pool(synnefo_db, 1)
    assert fixed.available_map == seed.available_map
    expected = bytearray(base64.b64decode(seed.reserved_map))
    expected[(250 - 2) // 8] &= ~(0x80 >> ((250 - 2) % 8)) & 0xFF  # offset 2: .250 is bit 248
    assert base64.b64decode(fixed.reserved_map) == bytes(expected)
    assert not ippool.is_free(fixed, "203.0.113.250")
    assert ippool.is_free(fixed, "203.0.113.249") and ippool.is_free(fixed, "203.0.113.251")
    assert reconcile(watch, "--fix-all")[1]["findings"] == []


def test_a_pool_never_initialised_is_reported_and_left_alone(watch, rapi_server, synnefo_db):
    synnefo_db.query("UPDATE db_ippooltable SET available_map = '' WHERE id = 1")
    code, report = reconcile(watch, "--fix-pool")
    assert findings(report) == [("pool", 1, "report")]
    (f,) = report["findings"]
    why = "IP pool 1 (203.0.113.0/24) has an empty available_map: it was never initialised"
    assert (f["database"], f["text"]) == (why, f"cannot be fixed now: {why}")
    assert synnefo_db.one("SELECT available_map FROM db_ippooltable WHERE id = 1") == ("",)


def test_a_pool_that_changed_since_it_was_seen_is_not_rebuilt(make_config, synnefo_db):
    """Compare and set: reconciliation saw one map, an allocator changed the row meanwhile."""
    cfg = config.load(make_config(database={"dsn": synnefo_db.dsn, "backend_id": 1}))
    seed = pool(synnefo_db, 1)
    seen = ippool.release(seed, "203.0.113.10")
    changed = ippool.reserve(seen, "203.0.113.6")  # Synnefo took .6 after the pass read the pool
    set_pool(synnefo_db, changed)
    db = Database(cfg.database)
    try:
        why = db.fix_pool(seen, ())
        assert why is not None and "changed since reconciliation saw it" in why
        assert why == "IP pool 1 changed since reconciliation saw it: judged again next pass"
        assert pool(synnefo_db, 1) == changed
        gone = ippool.Pool(999, seen.available_map, seen.reserved_map, seen.size, seen.base, seen.offset)
        assert db.fix_pool(gone, ()) == "IP pool 999 is gone"
        assert db.fix_pool(changed, ()) is None  # as seen: rebuilt from the rows (no row holds .6)
        assert pool(synnefo_db, 1) == seed
    finally:
        db.close()


# ---------------------------------------------------------------- dry run, offline backend


def test_a_dry_run_decides_fixes_but_submits_and_writes_nothing(watch, rapi_server, synnefo_db):
    rapi_server.set_body(NETWORKS, [n for n in networks() if n["name"] != "snf-net-2"])
    rapi_server.set_body("/2/networks", 901, method="POST")
    corrupt = ippool.release(pool(synnefo_db, 1), "203.0.113.10")
    set_pool(synnefo_db, corrupt)
    code, report = reconcile(watch, "--dry-run", "--fix-all")
    assert findings(report) == [("network-missing", 2, "fix"), ("pool", 1, "fix")]
    assert (writes(rapi_server), report["jobs"]) == ([], {})
    assert pool(synnefo_db, 1) == corrupt


def test_an_offline_backend_has_no_network_or_pool_reconciled(watch, rapi_server, synnefo_db):
    synnefo_db.query("UPDATE db_backendnetwork SET operstate = 'PENDING' WHERE id = 2")
    corrupt = ippool.release(pool(synnefo_db, 1), "203.0.113.10")
    set_pool(synnefo_db, corrupt)
    rapi_server.set_body(NETWORKS, [])  # Ganeti "has no network": never "every network is missing"
    synnefo_db.query("UPDATE db_backend SET offline = true WHERE id = 1")
    code, report = reconcile(watch, "--fix-all")
    assert report["findings"] == []
    assert "backend 1 is offline in db_backend: not reconciled" in report["problems"]
    assert (report["checked_networks"], report["checked_pools"]) == (0, 0)
    assert rapi_server.seen("/2/networks", "GET") == []
    assert writes(rapi_server) == []
    assert backend_network(synnefo_db, 2) == (2, "PENDING", False)
    assert pool(synnefo_db, 1) == corrupt
