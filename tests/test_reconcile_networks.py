"""Reconciliation of networks and IP pools, as pure functions over recorded RAPI bodies (Ganeti 3.0.2).

Recorded network: "testnet" 203.0.113.0/24 (gateway .1), connected to node group "default"
(bridged, gnt-br0), inst1 has a NIC on it, Ganeti reserves .0 .1 .250 .255. It is renamed
snf-net-<id> as Synnefo names its networks. Recorded groups: "default" only; a second group
"rack2" is a copy of it. Pools are the seed's (tests/synnefo/seed.sql): pool 1 = 203.0.113.2-.254
with .2 .3 .4 .5 .10 in use, pool 2 = 192.168.10.1-.254 with .1 in use.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FIXTURES

from snf_watcher import apply, events, ippool, messages, reconcile, snapshot
from snf_watcher.reconcile import BackendNetworkRow, NetworkRow, PoolRows, Subnet
from snf_watcher.state import Record

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=1)
RESERVED = ("203.0.113.0", "203.0.113.1", "203.0.113.250", "203.0.113.255")
V4 = Subnet(4, "203.0.113.0/24", "203.0.113.1", True)
V6 = Subnet(6, "2001:db8:1::/64", "2001:db8:1::1", False)
ORPHAN_FIX = "disconnect it from its node groups and remove it through RAPI"


def recorded(name: str):
    return json.loads((FIXTURES / "rapi" / name).read_text())


def gnet(net_id: int | str, groups=("default",), instances=(), **fields) -> dict:
    """The recorded network as Ganeti would list snf-net-<net_id> (or the name given)."""
    body = copy.deepcopy(recorded("networks-bulk.json")[0])
    body["name"] = net_id if isinstance(net_id, str) else f"snf-net-{net_id}"
    body["group_list"] = [[g, "bridged", "gnt-br0", ""] for g in groups]
    body["inst_list"] = list(instances)
    return body | fields


def group_bodies(*names: str) -> list[dict]:
    out = []
    for name in names:
        body = copy.deepcopy(recorded("groups-bulk.json")[0])
        body["name"] = name
        out.append(body)
    return out


def cluster(networks: list[dict], groups=("default",), jobs: list | None = None) -> snapshot.Ganeti:
    return snapshot.with_networks(snapshot.ganeti([], [], jobs or []), networks, group_bodies(*groups))


def bn(bn_id: int, operstate: str = "ACTIVE", **kw) -> BackendNetworkRow:
    values = dict(deleted=False, job_id=50, created=LONG_AGO, updated=LONG_AGO)
    return BackendNetworkRow(bn_id, operstate, **(values | kw))


def netrow(net_id: int, **kw) -> NetworkRow:
    """Network <net_id>, public, bridged on gnt-br0, with an ACTIVE backend network row 100 + id."""
    values = dict(
        deleted=False,
        action="CREATE",
        public=True,
        mode="bridged",
        link="gnt-br0",
        tags=(),
        mac_prefix="aa:00:01",
        subnets=(V4,),
        backend=bn(100 + net_id),
    )
    return NetworkRow(net_id, **(values | kw))


def findings(g: snapshot.Ganeti, rows, jobs=None) -> list[tuple]:
    found = reconcile.network_diff(g, rows, jobs or {}, NOW)
    return [(f.kind, f.id, f.name, f.ganeti, f.database, f.fix, f.groups, f.blocked) for f in found]


# ---------------------------------------------------------------- the snapshot


def test_the_recorded_network_and_group_bodies():
    g = snapshot.with_networks(
        snapshot.ganeti([], [], []), recorded("networks-bulk.json"), recorded("groups-bulk.json")
    )
    assert g.groups == ("default",)
    assert g.networks == (
        snapshot.Network(
            name="testnet",
            cidr="203.0.113.0/24",
            groups=("default",),
            instances=("inst1.ganeti.test",),
            reserved=RESERVED,
        ),
    )


def test_an_old_style_group_list_entry_names_its_group():
    (net,) = cluster([gnet(1) | {"group_list": ["default(bridged, br0)"]}]).networks
    assert net.groups == ("default",)


def test_a_network_without_address_range_or_reservations():
    (net,) = cluster([gnet(1, groups=(), network=None, external_reservations=None, inst_list=None)]).networks
    assert net == snapshot.Network("snf-net-1", None, (), (), ())


@pytest.mark.parametrize(
    ("networks", "groups", "names"),
    [
        ({"name": "snf-net-1"}, [], "networks answer is not a list"),
        ([{"network": "203.0.113.0/24"}], [], "network ?: name is None, expected str"),
        ([gnet(1) | {"external_reservations": ["203.0.113.1"]}], [], "external_reservations is"),
        ([gnet(1) | {"group_list": [[]]}], [], "group_list entry [] names no group"),
        ([gnet(1) | {"group_list": [[7, "bridged", "br0", ""]]}], [], "group_list entry"),
        ([], "default", "groups answer is not a list"),
        ([], [{"uuid": "f888f69a"}], "group ?: name is None"),
    ],
)
def test_a_malformed_network_or_group_body_is_a_clear_error(networks, groups, names):
    with pytest.raises(snapshot.BadSnapshot) as e:
        snapshot.with_networks(snapshot.ganeti([], [], []), networks, groups)
    assert names in str(e.value)


def test_a_group_or_instance_list_that_is_not_a_list_is_a_clear_error():
    with pytest.raises(snapshot.BadSnapshot, match="group_list is 'default"):
        cluster([gnet(1) | {"group_list": "default(bridged, br0)"}])
    with pytest.raises(snapshot.BadSnapshot, match="inst_list is 'inst1'"):
        cluster([gnet(1) | {"inst_list": "inst1"}])


def test_networks_to_read_are_the_synnefo_networks_ganeti_has():
    g = cluster([gnet(1), gnet("testnet"), gnet(3), gnet("snf-net-3a"), gnet("snf-net-")])
    assert reconcile.networks_to_read(g) == {1, 3}


# ---------------------------------------------------------------- network_diff


def test_a_network_in_step_with_its_rows_has_no_findings():
    assert findings(cluster([gnet(1)]), {1: netrow(1)}) == []


def test_a_job_in_flight_for_the_network_keeps_it_from_being_judged():
    def connect(job_id: int, status: str, network: str) -> dict:
        op = {"OP_ID": "OP_NETWORK_CONNECT", "network_name": network, "group_name": "rack2"}
        return {"id": job_id, "status": status, "ops": [op]}

    networks = [gnet(1), gnet(2)]  # neither is connected to rack2
    running = cluster(networks, ("default", "rack2"), [connect(70, "running", "snf-net-1")])
    assert running.busy_networks == {"snf-net-1": 70}
    rows = {1: netrow(1), 2: netrow(2)}
    assert [f[:2] for f in findings(running, rows)] == [("network-groups", 2)]
    ended = cluster(networks, ("default", "rack2"), [connect(70, "success", "snf-net-1")])
    assert ended.busy_networks == {}
    assert [f[:2] for f in findings(ended, rows)] == [("network-groups", 1), ("network-groups", 2)]


def test_a_row_whose_backend_job_is_live_is_not_judged():
    rows = {1: netrow(1, backend=bn(101, "PENDING", job_id=60))}  # Ganeti lacks it: missing, unless...
    for status in ("queued", "waiting", "running", "canceling"):
        assert findings(cluster([]), rows, {60: status}) == []
    assert [f[:2] for f in findings(cluster([]), rows, {60: "error"})] == [("network-missing", 1)]


def test_stale_backend_rows_of_networks_that_are_gone_and_not_wanted():
    rows = {
        2: netrow(2, deleted=True),
        3: netrow(3, action="DESTROY", backend=bn(103, "PENDING")),
        4: netrow(4, deleted=True, backend=bn(104, "DELETED", deleted=True)),  # already DELETED
        5: netrow(5, action="DESTROY", backend=bn(105, "DELETED")),
        6: netrow(6, deleted=True, backend=None),  # never on this backend
    }
    fix = "mark the backend network DELETED"
    assert findings(cluster([]), rows) == [
        ("network-stale", 2, "snf-net-2", "no network", "backend network 102 ACTIVE", fix, (), None),
        ("network-stale", 3, "snf-net-3", "no network", "backend network 103 PENDING", fix, (), None),
    ]
    found = reconcile.network_diff(cluster([]), rows, {}, NOW)
    assert [(f.updated, f.network, f.destructive, f.subject) for f in found] == [
        (LONG_AGO, rows[2], False, "network:2"),
        (LONG_AGO, rows[3], False, "network:3"),
    ]


def test_missing_networks_are_created_and_connected_to_every_node_group():
    young = NOW - reconcile.BUILD_GRACE + timedelta(minutes=1)
    rows = {
        1: netrow(1),
        2: netrow(2, mode=None),
        3: netrow(3, link=""),
        4: netrow(4, backend=bn(104, "PENDING", job_id=None, created=young)),  # its job is on its way
        5: netrow(5, backend=bn(105, "PENDING", job_id=None, created=NOW - reconcile.BUILD_GRACE)),
        6: netrow(6, backend=bn(106, "PENDING", job_id=61, created=young)),  # its job ended
    }
    fix = "create it in Ganeti and connect it to every node group"
    groups = ("default", "rack2")
    seen = "no network"

    def why(i: int) -> str:
        return f"network {i} has no mode or link to connect it with"

    assert findings(cluster([], groups), rows, {61: "error"}) == [
        ("network-missing", 1, "snf-net-1", seen, "backend network 101 ACTIVE", fix, groups, None),
        ("network-missing", 2, "snf-net-2", seen, "backend network 102 ACTIVE", fix, groups, why(2)),
        ("network-missing", 3, "snf-net-3", seen, "backend network 103 ACTIVE", fix, groups, why(3)),
        ("network-missing", 5, "snf-net-5", seen, "backend network 105 PENDING", fix, groups, None),
        ("network-missing", 6, "snf-net-6", seen, "backend network 106 PENDING", fix, groups, None),
    ]


def test_orphan_networks_are_those_ganeti_has_without_a_live_row():
    g = cluster([gnet(3, instances=["inst1.ganeti.test"]), gnet(4), gnet(5, groups=())], ("default", "rack2"))
    rows = {5: netrow(5, deleted=True, backend=None)}
    on = "network 203.0.113.0/24, groups"
    assert findings(g, rows) == [
        (
            "network-orphan",
            3,
            "snf-net-3",
            f"{on} default",
            "no network row",
            ORPHAN_FIX,
            ("default",),
            "1 instances still have a NIC on it: inst1.ganeti.test",
        ),
        ("network-orphan", 4, "snf-net-4", f"{on} default", "no network row", ORPHAN_FIX, ("default",), None),
        ("network-orphan", 5, "snf-net-5", f"{on} none", "network deleted", ORPHAN_FIX, (), None),
    ]
    found = reconcile.network_diff(g, rows, {}, NOW)
    assert all(f.destructive for f in found)
    assert [f.network for f in found] == [None, None, rows[5]]


def test_an_orphan_names_at_most_five_of_the_instances_on_it():
    names = [f"inst{i}.ganeti.test" for i in range(1, 8)]
    (f,) = reconcile.network_diff(cluster([gnet(3, instances=names)]), {}, {}, NOW)
    assert f.blocked == f"7 instances still have a NIC on it: {', '.join(names[:5])}"


def test_a_network_connected_to_fewer_node_groups_than_exist():
    g = cluster([gnet(1), gnet(2, groups=()), gnet(3)], ("default", "rack2", "rack3"))
    rows = {1: netrow(1), 2: netrow(2), 3: netrow(3, mode=None)}
    assert findings(g, rows) == [
        (
            "network-groups",
            1,
            "snf-net-1",
            "connected to default",
            "bridged gnt-br0 on every node group",
            "connect it to rack2, rack3",
            ("rack2", "rack3"),
            None,
        ),
        (
            "network-groups",
            2,
            "snf-net-2",
            "connected to no node group",
            "bridged gnt-br0 on every node group",
            "connect it to default, rack2, rack3",
            ("default", "rack2", "rack3"),
            None,
        ),
        (
            "network-groups",
            3,
            "snf-net-3",
            "connected to default",
            "- gnt-br0 on every node group",
            "connect it to rack2, rack3",
            ("rack2", "rack3"),
            "network 3 has no mode or link to connect it with",
        ),
    ]


def test_a_network_connected_everywhere_whose_backend_row_does_not_say_so():
    g = cluster([gnet(1), gnet(2), gnet(3), gnet(4)])
    rows = {
        1: netrow(1, backend=None),
        2: netrow(2, backend=bn(102, "PENDING")),
        3: netrow(3),  # ACTIVE: in step
        4: netrow(4, backend=bn(104, "ACTIVE", deleted=True)),
    }
    everywhere = "connected to every node group"
    assert findings(g, rows) == [
        (
            "network-unsynced",
            1,
            "snf-net-1",
            everywhere,
            "no backend network row",
            "mark the backend network ACTIVE",
            (),
            None,
        ),
        (
            "network-unsynced",
            2,
            "snf-net-2",
            everywhere,
            "backend network 102 PENDING",
            "mark the backend network ACTIVE",
            (),
            None,
        ),
        (
            "network-unsynced",
            4,
            "snf-net-4",
            everywhere,
            "backend network 104 ACTIVE",
            "none: the row is deleted",
            (),
            "its backend network row is deleted",
        ),
    ]
    found = reconcile.network_diff(g, rows, {}, NOW)
    assert [f.updated for f in found] == [None, LONG_AGO, LONG_AGO]  # no row: nothing to compare


def test_networks_that_are_where_their_rows_say_they_should_be_or_are_going():
    g = cluster([gnet(2, groups=()), gnet("testnet"), gnet("snf-net-9x")])
    rows = {
        1: netrow(1, backend=bn(101, "DELETED", deleted=True)),  # deleted here, and Ganeti lacks it
        2: netrow(2, action="DESTROY"),  # Synnefo is removing it: not missing groups, not unsynced
    }
    assert findings(g, rows) == []  # and testnet, snf-net-9x are not Synnefo's


# ---------------------------------------------------------------- what Synnefo asks Ganeti for


def test_the_body_of_a_public_dual_stack_network():
    row = netrow(1, tags=("sandbox",), subnets=(V4, V6), mac_prefix="aa:00:01")
    assert reconcile.create_network_body("snf-net-1", row) == {
        "network_name": "snf-net-1",
        "network": "203.0.113.0/24",
        "gateway": "203.0.113.1",
        "network6": "2001:db8:1::/64",
        "gateway6": "2001:db8:1::1",
        "mac_prefix": "aa:00:01",
        "conflicts_check": True,
        "tags": ["sandbox", "nfdhcpd", "public"],
    }
    assert row.tags == ("sandbox",)  # the row is not touched


def test_the_body_of_a_private_network_without_gateway_or_dhcp():
    row = netrow(
        2,
        public=False,
        tags=("private-filtered",),
        subnets=(Subnet(4, "192.168.10.0/24", None, False),),
        mac_prefix="aa:00:10",
    )
    assert reconcile.create_network_body("snf-net-2", row) == {
        "network_name": "snf-net-2",
        "network": "192.168.10.0/24",
        "mac_prefix": "aa:00:10",
        "conflicts_check": False,
        "tags": ["private-filtered", "private"],
    }
    assert not reconcile.conflicts_check(row)


def test_an_ipv6_only_network_gets_a_dummy_ipv4_range_and_no_conflict_check():
    row = netrow(3, subnets=(replace(V6, dhcp=True),), tags=("nfdhcpd",))
    assert reconcile.create_network_body("snf-net-3", row) == {
        "network_name": "snf-net-3",
        "network": "10.0.0.0/29",
        "network6": "2001:db8:1::/64",
        "gateway6": "2001:db8:1::1",
        "mac_prefix": "aa:00:01",
        "conflicts_check": False,  # public, but no IPv4
        "tags": ["nfdhcpd", "public"],  # nfdhcpd once
    }


def test_conflicts_are_checked_only_for_public_networks_with_ipv4():
    assert reconcile.conflicts_check(netrow(1, subnets=(V4,)))
    assert reconcile.conflicts_check(netrow(1, subnets=(V6, V4)))
    assert not reconcile.conflicts_check(netrow(1, subnets=(V6,)))
    assert not reconcile.conflicts_check(netrow(1, subnets=()))
    assert not reconcile.conflicts_check(netrow(1, public=False, subnets=(V4,)))


# ---------------------------------------------------------------- ippool: drift and repair

POOL1 = ippool.Pool(
    1, "D3////////////////////////////////////////g=", "//////////////////////////////////////////g=", 253,
    "203.0.113.0/24", 2,
)  # fmt: skip
POOL2 = ippool.Pool(
    2, "f/////////////////////////////////////////w=", "//////////////////////////////////////////w=", 254,
    "192.168.10.0/24", 1,
)  # fmt: skip
USED1 = ("203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5", "203.0.113.10")
USED2 = ("192.168.10.1",)


def a(*last: int, net: str = "203.0.113") -> tuple[str, ...]:
    return tuple(f"{net}.{i}" for i in last)


def test_the_seed_pools_agree_with_the_addresses_in_use():
    assert ippool.drift(POOL1, USED1) == ippool.Drift()
    assert not ippool.drift(POOL1, USED1)
    assert not ippool.drift(POOL2, USED2)


def test_addresses_outside_the_pool_are_ignored():
    # the gateway .1 and the broadcast .255 are not in pool 1 (.2-.254), nor is another subnet's
    d = ippool.drift(
        POOL1, (*USED1, "203.0.113.1", "203.0.113.255", "192.168.10.7", "2001:db8::5"), a(0, 1, 255)
    )
    assert not d


def test_an_address_in_use_that_the_pool_would_hand_out_again():
    assert ippool.drift(POOL1, (*USED1, "203.0.113.11", "203.0.113.6")) == ippool.Drift(
        used_but_free=a(6, 11)
    )


def test_a_taken_bit_without_an_address_is_a_leak():
    assert ippool.drift(POOL1, a(2, 3, 5, 10)) == ippool.Drift(taken_unused=a(4))
    assert ippool.drift(POOL2, ()) == ippool.Drift(taken_unused=("192.168.10.1",))


def test_a_ganeti_reservation_that_the_pool_offers():
    assert ippool.drift(POOL1, USED1, RESERVED) == ippool.Drift(reserved_free=a(250))
    # already reserved in the pool: agreed
    kept = ippool.repaired(POOL1, USED1, RESERVED)
    assert kept.available_map == POOL1.available_map and not ippool.is_free(kept, "203.0.113.250")
    assert not ippool.drift(kept, USED1, RESERVED)
    # held by a NIC: it is in use, not free, and no reservation drift
    assert not ippool.drift(ippool.reserve(POOL1, "203.0.113.250"), (*USED1, "203.0.113.250"), RESERVED)


def test_an_address_held_twice():
    d = ippool.drift(POOL1, (*USED1, "203.0.113.3", "203.0.113.10", "203.0.113.3"))
    assert d == ippool.Drift(duplicates=a(3, 10))
    assert d


def test_repaired_pools_have_no_drift_and_consistent_ones_are_left_as_they_are():
    assert ippool.repaired(POOL1, USED1) == POOL1
    assert ippool.repaired(POOL1, (*USED1, "203.0.113.1", "203.0.113.255"), a(0, 1, 255)) == POOL1
    assert ippool.repaired(POOL2, USED2) == POOL2
    used = a(2, 3, 10, 11, 200)  # .4 .5 leaked, .11 .200 in use but free
    kept = ("203.0.113.1", "203.0.113.250", "203.0.113.200")  # .200 is held by a NIC
    assert ippool.drift(POOL1, used, kept) == ippool.Drift(a(11, 200), a(4, 5), a(250))
    fixed = ippool.repaired(POOL1, used, kept)
    assert not ippool.drift(fixed, used, kept)
    assert [ippool.is_free(fixed, x) for x in a(2, 4, 5, 11, 12, 200, 250)] == [
        False, True, True, False, True, False, False,
    ]  # fmt: skip
    assert fixed.size == POOL1.size and fixed.base == POOL1.base and fixed.offset == POOL1.offset


@pytest.mark.parametrize(
    ("pool", "text"),
    [
        (
            ippool.Pool(3, "", "", 254, "10.1.0.0/24", 1),
            "IP pool 3 (10.1.0.0/24) has an empty available_map: it was never initialised",
        ),
        (replace(POOL1, reserved_map=""), "IP pool 1 (203.0.113.0/24) has an empty reserved_map"),
        (replace(POOL1, available_map="AA=="), "available_map holds 8 bits for size 253"),
        (replace(POOL1, base=None), "IP pool 1 has no base subnet"),
    ],
)
def test_an_unusable_pool_is_an_error(pool, text):
    with pytest.raises(ippool.PoolError) as e:
        ippool.drift(pool, USED1)
    assert text in str(e.value)
    with pytest.raises(ippool.PoolError):
        ippool.repaired(pool, USED1)


# ---------------------------------------------------------------- pool_diff


def test_a_finding_per_pool_that_disagrees_with_the_addresses_in_use():
    g = cluster([gnet(1)])  # Ganeti reserves .0 .1 .250 .255 of network 1
    pools = [PoolRows(POOL2, 2, USED2), PoolRows(POOL1, 1, a(2, 3, 4, 10, 11))]
    (f,) = reconcile.pool_diff(g, pools)
    assert (f.kind, f.id, f.name, f.ganeti, f.database, f.fix, f.blocked) == (
        "pool",
        1,
        "pool 1 (203.0.113.0/24, network 1)",
        "reserves 203.0.113.0, 203.0.113.1, 203.0.113.250, 203.0.113.255",
        "1 in use but free: 203.0.113.11; 1 taken but unused: 203.0.113.5; "
        "1 reserved in Ganeti but free: 203.0.113.250",
        "rebuild the pool's maps from the addresses in use",
        None,
    )
    assert (f.pool, f.reserved, f.key, f.subject, f.destructive) == (
        POOL1,
        RESERVED,
        "pool:1",
        "pool:1",
        False,
    )


def test_pool_findings_come_by_pool_id_and_name_a_few_addresses():
    g = cluster([gnet(1)])
    pools = [PoolRows(POOL2, 2, a(*range(1, 9), net="192.168.10")), PoolRows(POOL1, 1, USED1)]
    found = reconcile.pool_diff(g, pools)
    assert [(f.id, f.ganeti, f.database) for f in found] == [
        (1, f"reserves {', '.join(RESERVED)}", "1 reserved in Ganeti but free: 203.0.113.250"),
        (
            2,
            "no external reservations",  # Ganeti has no snf-net-2
            "7 in use but free: 192.168.10.2, 192.168.10.3, 192.168.10.4, 192.168.10.5, "
            "192.168.10.6 and 2 more",
        ),
    ]


def test_an_address_held_twice_needs_a_person():
    (f,) = reconcile.pool_diff(cluster([]), [PoolRows(POOL2, 2, ("192.168.10.1", "192.168.10.1"))])
    assert (f.kind, f.id, f.database, f.blocked) == (
        "pool",
        2,
        "1 held by several addresses: 192.168.10.1",
        "an address held twice needs a person to decide which NIC keeps it",
    )
    # with drift a rebuild can fix, the rebuild is not blocked by the duplicate
    (f,) = reconcile.pool_diff(
        cluster([]), [PoolRows(POOL2, 2, ("192.168.10.1", "192.168.10.1", "192.168.10.9"))]
    )
    assert f.blocked is None
    assert f.database == "1 in use but free: 192.168.10.9; 1 held by several addresses: 192.168.10.1"


def test_an_uninitialised_pool_is_reported_and_not_touched():
    pool = ippool.Pool(3, "", "", 254, "10.1.0.0/24", 1)
    (f,) = reconcile.pool_diff(cluster([]), [PoolRows(pool, 3, ())])
    text = "IP pool 3 (10.1.0.0/24) has an empty available_map: it was never initialised"
    assert (f.kind, f.id, f.ganeti, f.database, f.fix, f.blocked, f.pool) == (
        "pool",
        3,
        "-",
        text,
        "none",
        text,
        pool,
    )


def test_consistent_pools_give_no_finding():
    g = cluster([gnet(1, external_reservations="203.0.113.0, 203.0.113.1, 203.0.113.255")])
    assert reconcile.pool_diff(g, [PoolRows(POOL1, 1, USED1), PoolRows(POOL2, 2, USED2)]) == []


# ---------------------------------------------------------------- decide, subjects


OPTS = reconcile.Options(fix=reconcile.SAFE | {"network-missing", "network-orphan"}, max_tries=2)
T0 = 1_795_300_000.0


def test_finding_subjects_and_keys():
    assert reconcile.subject_of("network-orphan:3") == "network:3"
    assert reconcile.subject_of("network-stale:12") == "network:12"
    assert reconcile.subject_of("pool:1") == "pool:1"
    assert reconcile.subject_of("operstate:101") == "vm:101"
    assert reconcile.subject_of("stale:101") == "vm:101"
    for kind, subject in (("network-groups", "network:3"), ("pool", "pool:3"), ("nics", "vm:3")):
        f = reconcile.Finding(kind, 3, "x", "g", "d", "fix")
        assert (f.key, f.subject) == (f"{kind}:3", subject)
        assert reconcile.subject_of(f.key) == f.subject
    assert set(reconcile.NETWORK_KINDS) | {"pool"} <= set(reconcile.KINDS)


def test_a_blocked_finding_is_reported_and_costs_no_attempt():
    g = cluster([gnet(3, instances=["inst1.ganeti.test"])])
    rows = {2: netrow(2, mode=None)}
    found = reconcile.network_diff(g, rows, {}, NOW)
    assert [(f.kind, f.id) for f in found] == [("network-missing", 2), ("network-orphan", 3)]
    assert {f.kind for f in found} <= OPTS.fix
    records: dict[str, Record] = {}
    for n in range(3):
        outcomes, records = reconcile.decide(found, records, {"network:2", "network:3"}, OPTS, T0 + n * 300)
        assert [(o.action, o.severity, o.text) for o in outcomes] == [
            ("report", 1, "cannot be fixed now: network 2 has no mode or link to connect it with"),
            ("report", 1, "cannot be fixed now: 1 instances still have a NIC on it: inst1.ganeti.test"),
        ]
        assert {k: (r.attempts, r.last_attempt, r.vm_id) for k, r in records.items()} == {
            "network-missing:2": (0, None, None),
            "network-orphan:3": (0, None, None),
        }


def test_an_unblocked_network_finding_is_fixed_and_counted():
    found = reconcile.network_diff(cluster([gnet(1)]), {1: netrow(1, backend=None)}, {}, NOW)
    outcomes, records = reconcile.decide(found, {}, {"network:1"}, OPTS, T0)
    assert [(o.action, o.text) for o in outcomes] == [("fix", "mark the backend network ACTIVE (fix 1 of 2)")]
    assert records["network-unsynced:1"].attempts == 1
    assert records["network-unsynced:1"].vm_id is None  # not a VM


def test_records_of_checked_network_and_pool_subjects_without_the_finding_are_dropped():
    records = {
        "network-stale:3": Record("snf-net-3", None, attempts=1, first_failure=T0, last_attempt=T0),
        "network-orphan:4": Record("snf-net-4", None, first_failure=T0),
        "pool:1": Record("pool 1", None, attempts=1, first_failure=T0, last_attempt=T0),
        "stale:3": Record("snf-3", 3, attempts=1, first_failure=T0, last_attempt=T0),
    }
    _, kept = reconcile.decide([], records, {"network:3", "pool:1"}, OPTS, T0 + 300)
    assert set(kept) == {"network-orphan:4", "stale:3"}  # network 4 not checked; vm:3 is not network:3
    _, kept = reconcile.decide([], records, {"network:3", "network:4", "pool:1", "vm:3"}, OPTS, T0 + 300)
    assert kept == {}


# ---------------------------------------------------------------- the correction message


def correction_message(network: str = "snf-net-3", kind: str = "network-unsynced", **kw) -> dict:
    values = dict(event_time=[1795300000, 0], expect_updated=None)
    return messages.network_correction(network=network, kind=kind, **(values | kw))


def test_a_network_correction_message_parses():
    ev = events.parse(correction_message(), "snf-")
    assert isinstance(ev, events.NetworkCorrection)
    assert (ev.network_id, ev.kind, ev.expect_updated, ev.time) == (
        3,
        "network-unsynced",
        None,
        datetime.fromtimestamp(1795300000, UTC),
    )
    assert ev.key[:2] == (1795300000, 0)
    ev = events.parse(correction_message(kind="network-stale", expect_updated=LONG_AGO.isoformat()), "snf-")
    assert (ev.kind, ev.expect_updated) == ("network-stale", LONG_AGO)
    assert messages.describe(correction_message()) == "snf-watcher-reconcile snf-net-3 network-unsynced"


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (correction_message(kind="network-orphan"), "kind 'network-orphan' is not a correction"),
        (correction_message(kind="stale"), "kind 'stale' is not a correction"),
        (correction_message(expect_updated="yesterday"), "expect_updated is 'yesterday'"),
        (correction_message(event_time=[1795300000]), "event_time is"),
        (correction_message(network=3), "field 'network' is 3"),
    ],
)
def test_a_network_correction_that_can_never_apply(message, text):
    with pytest.raises(events.BadMessage) as e:
        events.parse(message, "snf-")
    assert text in str(e.value)


def test_a_correction_for_a_network_that_is_not_synnefos_is_skipped():
    assert events.parse(correction_message(network="testnet"), "snf-") == events.Skip(
        "network 'testnet' is not named snf-net-<id>"
    )


# ---------------------------------------------------------------- delivering it: fold_network

T = datetime.fromtimestamp(1795300000, UTC)


def bn_columns(**kw) -> dict:
    """A db_backendnetwork row as delivery reads it: network 3's on this backend, id 7."""
    values = dict(
        id=7,
        network_id=3,
        deleted=False,
        operstate="PENDING",
        backendjobid=50,
        backendopcode="OP_NETWORK_ADD",
        backendjobstatus="success",
        backendlogmsg=None,
        backendtime=LONG_AGO,
        updated=LONG_AGO,
    )
    return values | kw


def correction(
    kind: str = "network-unsynced", seconds: int = 1795300000, expect=None
) -> events.NetworkCorrection:
    message = correction_message(kind=kind, event_time=[seconds, 0], expect_updated=expect)
    return events.parse(message, "snf-")


def network_status(opcode: str, status: str, seconds: int, job_id: int = 80) -> events.NetworkStatus:
    message = messages.network_status(
        network="snf-net-3",
        operation=opcode,
        status=status,
        job_id=job_id,
        op_index=0,
        logmsg=None,
        result=None,
        event_time=[seconds, 0],
        cluster="cluster.ganeti.test",
        job_fields={},
    )
    return events.parse(message, "snf-")


def test_an_unsynced_correction_marks_the_backend_network_active():
    ev = correction(expect=LONG_AGO.isoformat())
    plan = apply.fold_network(bn_columns(), {}, [ev])
    assert plan.applied == [ev] and plan.skipped == [] and plan.dead == []
    assert plan.columns == bn_columns(operstate="ACTIVE", backendtime=T)  # job columns untouched
    assert plan.keys == {"oper": ev.key}


def test_a_stale_correction_marks_the_backend_network_deleted():
    ev = correction("network-stale", expect=LONG_AGO.isoformat())
    plan = apply.fold_network(bn_columns(operstate="ACTIVE"), {}, [ev])
    assert plan.applied == [ev]
    assert (plan.columns["operstate"], plan.columns["deleted"]) == ("DELETED", True)
    assert plan.keys == {"oper": ev.key, "removed": ev.key}


def test_a_correction_for_a_row_that_changed_since_is_not_applied():
    ev = correction("network-stale", expect=(LONG_AGO - timedelta(seconds=1)).isoformat())
    plan = apply.fold_network(bn_columns(operstate="ACTIVE"), {}, [ev])
    assert plan.applied == [] and plan.columns == bn_columns(operstate="ACTIVE")
    assert [(e, why) for e, why in plan.skipped] == [
        (ev, "network 3 changed since reconciliation saw it: judged again next pass")
    ]
    assert "changed since reconciliation saw it" in plan.skipped[0][1]


def test_a_network_event_newer_than_the_correction_wins():
    fix = correction()
    newer = network_status("OP_NETWORK_DISCONNECT", "success", 1795300005)
    older = network_status("OP_NETWORK_ADD", "success", 1795299995)
    plan = apply.fold_network(bn_columns(), {}, [newer, fix, older])
    assert plan.applied == [older, fix, newer]
    assert plan.columns["operstate"] == "PENDING"  # the disconnect, after what reconciliation saw
    assert plan.columns["backendopcode"] == "OP_NETWORK_DISCONNECT"
    assert plan.keys["oper"] == newer.key
    # an older event does not undo the correction
    plan = apply.fold_network(bn_columns(), {}, [fix, older])
    assert plan.columns["operstate"] == "ACTIVE"
    # nor does the correction undo a newer event delivered before it
    plan = apply.fold_network(bn_columns(), {"oper": newer.key}, [fix])
    assert plan.applied == [fix] and plan.columns["operstate"] == "PENDING"


def test_a_stale_correction_is_terminal_like_a_removal():
    fix = correction("network-stale")
    newer = network_status("OP_NETWORK_CONNECT", "success", 1795300005)
    plan = apply.fold_network(bn_columns(operstate="ACTIVE"), {}, [newer, fix])
    assert (plan.columns["operstate"], plan.columns["deleted"]) == ("DELETED", True)
    assert plan.skipped == [(newer, "network 3 on this backend is deleted")]
    # and a deleted row takes no correction
    plan = apply.fold_network(bn_columns(deleted=True, operstate="DELETED"), {}, [correction()])
    assert plan.applied == [] and plan.columns["operstate"] == "DELETED"
