#!/usr/bin/env python3
"""Reconciliation detection: every VM row against every instance, 10,000 and 100,000 VMs.

`snf-watcher reconcile --all` compares each of a backend's VM rows (with its
flavor and its NIC/IPv4 rows) with the instance Ganeti lists for it, then
every network of the backend with Ganeti's and every IPv4 pool with the
addresses in use. Its cost is that of reading both sides plus the
comparison; this benchmark measures it against the floor of reading the
instances and the VM rows at all.

Setup, per size N (not timed): a throwaway PostgreSQL 15 (tests/pgserver.py,
fsync on) with Synnefo's schema and seed; the seed's own VMs are moved to a
second backend (they are not on this cluster). N VM rows on backend 1
(`SynnefoDb.add_vms`, ids from 1000), STARTED, on a flavor of our own (2
vCPUs, 3072 MiB, 30 GiB); each with one NIC row (id = the VM id, index 0,
network 1, ACTIVE, a unique MAC aa:00:00:xx:xx:xx) and its IPv4 row (network
1, subnet 11, a unique 10.x.y.z). Network 1's subnet 11 is widened to
10.0.0.0/14 (gateway 10.0.0.1) and the seed's addresses in it move along
(203.0.113.x -> 10.0.0.x, the floating one included); its pool 1 becomes
10.0.0.1-10.3.255.254 (offset 1, size 262,142), its available_map taken
exactly for the live address rows of subnet 11 (`ippool.repaired` of an
all-free pool), its reserved_map keeping the gateway (Ganeti's external
reservation); then the drift planted in it: a VM's address left free ("in use
but free") and 10.2.0.5 taken with no row ("taken but unused"). Network 2 and
pool 2 stay as the seed has them; the seed's db_backendnetwork rows keep
networks 1 and 2 ACTIVE on backend 1 (checked); ANALYZE. A synthetic
/2/instances?bulk=1 body (bytes): an instance snf-<id> per row, each a copy of
the recorded running instance
(tests/fixtures/ganeti-3.0.2/rapi/instances-bulk.json, ~1.3 KB) with the row's
vcpus/maxmem/disk, NIC name snf-nic-<id>, network snf-net-1, MAC and IPv4;
~0.5% ERROR_down/ERROR_up (the restart policy's, no finding). 1% of them are
drifted, in turns: operstate (ADMIN_down/USER_down), flavor (vcpus or maxmem),
NICs (another IPv4, another MAC, no NIC, an extra NIC Synnefo does not know),
operstate and flavor together; a few rows have no instance (stale) and a few
instances no row (orphans). A /2/jobs?bulk=1 body with N/1000 jobs in flight
(half of them on drifted instances, which are then not judged) and as many
finished ones; the node list (40 instances per node). A /2/networks?bulk=1
body (copies of the recorded network of networks-bulk.json, same directory):
snf-net-1 (10.0.0.0/14, connected to group "default", its network, gateway and
broadcast addresses externally reserved, its address map of 262,144
characters, an inst_list naming every instance with a NIC on it: all but the
NIC-less ones), snf-net-2 (192.168.10.0/24, no gateway, no instance here) and
snf-net-3 (a network Synnefo does not have: one network-orphan finding);
/2/groups?bulk=1 as recorded (groups-bulk.json), its node list the synthetic
nodes.

Measured in a fresh child process per size, connections open before the
clock, the cyclic GC on as in a pass:
  floor: `json.loads` of the instances and jobs bodies (then dropped, as in
         ours) + ONE query reading the backend's VM rows (`SELECT <the
         db_virtualmachine columns reconcile.Row holds> FROM db_virtualmachine
         WHERE backend_id = 1`, fetchall);
  ours:  `json.loads` of both bodies + `snapshot.ganeti` (the parsed bodies
         dropped after it, as `watcher._ganeti` does) + the VM ids as
         `watcher._reconcile` works them out for --all (the pass's `vms()`
         ids | the instances' ids, `reconcile.window`) + `Database.reconcile_rows`
         + `reconcile.jobs_to_look_up` + `reconcile.diff` over all of them;
         then, as the pass goes on: `json.loads` of the networks and groups
         bodies + `snapshot.with_networks` + `Database.network_rows` +
         `Database.pools` (the addresses in use of every pool: N + 5 rows)
         + `reconcile.network_diff` + `reconcile.pool_diff`.
Best of --repeat runs each (median too), floor and ours alternating; then one
run of each with the cyclic GC off (json.loads of a large body spends much of
its time in full collections, which flatters the ratio). The pass's
`Database.vms()` (shared with the restart step) is timed apart.

Peak memory: the child's peak RSS growth during the pass's `vms()` (held,
as the pass holds it) and its first run of ours: VmHWM of /proc/self/status,
reset via /proc/self/clear_refs just before (not getrusage's ru_maxrss, which
Linux carries over from the parent through fork and exec); on top of the
interpreter, the body bytes and the connections. A first child does the
floor alone, for comparison.

Correctness: the findings (kind, id) are exactly the drift planted, worked
out here from the planting, not by snf_watcher (busy instances excluded): the
VMs' (by VM id), then network 3's network-orphan, then pool 1's, which must
name exactly the two addresses planted.

Targets: ours <= 3x the floor at every size; peak RSS growth < 1.5 GB at
the largest (100,000); the findings exactly as planted at every size.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import ipaddress
import json
import pstats
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchlib
import psycopg2

sys.path.insert(0, str(benchlib.REPO / "tests"))
from pgserver import PgServer, SynnefoDb  # noqa: E402  (tests/ is no package)

from snf_watcher import config, ippool, reconcile, snapshot  # noqa: E402
from snf_watcher.events import id_from_name  # noqa: E402
from snf_watcher.syncdb import Database  # noqa: E402

TARGET_RATIO = 3.0
TARGET_PEAK = 1.5e9  # bytes
FIRST_VM = 1000
BACKEND = 1
PREFIX = "snf-"
FLAVOR = (64, 2, 3072, 30)  # id, vCPUs, MiB, GiB: ours, no seed flavor has it
PER_NODE = 40
DRIFT = 0.01
# What drifted instances get, in turns: the kinds of finding each must give.
DRIFTS = (
    ("operstate", ("operstate",)),
    ("flavor-cpu", ("flavor",)),
    ("nic-ip", ("nics",)),
    ("flavor-ram", ("flavor",)),
    ("nic-mac", ("nics",)),
    ("nic-none", ("nics",)),
    ("nic-unknown", ("nics",)),
    ("operstate+flavor", ("operstate", "flavor")),
)
VM_KINDS = ("orphan", "stale", "operstate", "build", "flavor", "nics", "task")
KIND_ORDER = {k: n for n, k in enumerate((*VM_KINDS, *reconcile.NETWORK_KINDS, "pool"))}
# Network 1's IPv4 subnet (the seed's subnet 11 and pool 1, widened): every VM's address is in it.
SUBNET = ipaddress.ip_network("10.0.0.0/14")
GATEWAY = SUBNET.network_address + 1
POOL_OFFSET = 1  # the pool: every address but the network's and the broadcast
POOL_SIZE = SUBNET.num_addresses - 2
SEED_IPS = (301, 303, 304, 305, 306)  # the seed's rows of subnet 11: 203.0.113.x -> 10.0.0.x
PRIVATE = ("192.168.10.0/24", "prv0", "aa:00:10")  # network 2 as the seed has it (pool 2)
ORPHAN_NETWORK = 3  # a network Ganeti has and Synnefo does not: one network-orphan finding
LEAKED = "10.2.0.5"  # taken in pool 1, yet no address row holds it (inside the pool, no VM's)
# The db_virtualmachine columns reconcile.Row is made of (the floor reads them, flavor by id only).
FLOOR_SQL = (
    "SELECT id, operstate, deleted, action, flavor_id, task, task_job_id, backendjobid, created, updated "
    "FROM db_virtualmachine WHERE backend_id = %s"
)


def mac(vm_id: int) -> str:
    h = f"{vm_id:06x}"
    return f"aa:00:00:{h[0:2]}:{h[2:4]}:{h[4:6]}"


def ipv4(vm_id: int) -> str:
    """Unique, inside SUBNET (10.0.0.0/14) for every id below 2**18, never its first addresses."""
    return f"10.{(vm_id >> 16) & 255}.{(vm_id >> 8) & 255}.{vm_id & 255}"


# ---------------------------------------------------------------- the synthetic cluster


@dataclass
class Planted:
    n: int
    instances_body: bytes
    jobs_body: bytes
    networks_body: bytes
    groups_body: bytes
    nodes: list[dict]
    # (id, kind) of every finding due, in the pass's order: the VMs' sorted (VM id, kind), then
    # the networks' (network id), then the pools' (pool id)
    expected: list[tuple[int, str]]
    pool_text: str  # what pool 1's finding must say of the database (the drift planted in it)
    free_address: str  # a VM row's address whose bit pool 1 has free: "in use but free"
    stale: list[int]  # row ids without an instance
    instances: int
    drifted: Counter  # drift name -> instances
    busy_drifted: int  # drifted instances a job in flight names (not judged)
    other_status: int  # ERROR_down/ERROR_up instances (no finding)
    on_net1: int  # instances with a NIC on snf-net-1: its inst_list


def network_template() -> dict:
    """The recorded network of /2/networks?bulk=1."""
    (net,) = json.loads((benchlib.FIXTURES / "rapi" / "networks-bulk.json").read_bytes())
    return net


def ganeti_network(
    base: dict,
    name: str,
    cidr: str,
    gateway: str | None,
    mac_prefix: str,
    link: str,
    tags: list[str],
    used: set[int],
    inst_list: list[str],
    rng: random.Random,
) -> dict:
    """A /2/networks?bulk=1 entry as Ganeti 3.0 gives it: its address map ("X" taken, "." free,
    one character per address), reserving the network address, the gateway and the broadcast
    externally; *used*: the offsets of the instances' addresses in it."""
    net = ipaddress.ip_network(cidr)
    reserved = [
        net.network_address,
        *([ipaddress.ip_address(gateway)] if gateway else []),
        net.broadcast_address,
    ]
    taken = used | {int(a) - int(net.network_address) for a in reserved}
    bitmap = "".join("X" if i in taken else "." for i in range(net.num_addresses))
    return {
        **base,
        "name": name,
        "network": cidr,
        "gateway": gateway,
        "network6": None,
        "gateway6": None,
        "mac_prefix": mac_prefix,
        "free_count": net.num_addresses - len(taken),
        "reserved_count": len(taken),
        "map": bitmap,
        "group_list": [["default", "bridged", link, ""]],
        "inst_list": inst_list,
        "external_reservations": ", ".join(str(a) for a in reserved),
        "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
        "tags": tags,
    }


def offsets_in(cidr: ipaddress.IPv4Network, addresses: list[str | None]) -> set[int]:
    first, out = int(cidr.network_address), set()
    for a in addresses:
        if a is not None and ipaddress.ip_address(a) in cidr:
            out.add(int.from_bytes(socket.inet_aton(a), "big") - first)
    return out


def template() -> dict:
    """The recorded running instance, with one NIC (as Synnefo's VMs here have)."""
    body = json.loads((benchlib.FIXTURES / "rapi" / "instances-bulk.json").read_bytes())
    (inst,) = [i for i in body if i["status"] == "running"]
    for key, value in list(inst.items()):
        if key.startswith("nic.") and isinstance(value, list):
            inst[key] = value[:1]
    return inst


def build(n: int, seed: int) -> Planted:
    rng = random.Random(seed * 1_000_003 + n)
    base = template()
    _, cpu, ram, disk = FLAVOR
    ids = list(range(FIRST_VM, FIRST_VM + n))
    few = max(5, n // 10_000)
    stale = sorted(rng.sample(ids, few))
    no_stale = sorted(set(ids) - set(stale))
    drifted = rng.sample(no_stale, round(n * DRIFT))
    drift_of = {vm: DRIFTS[k % len(DRIFTS)] for k, vm in enumerate(drifted)}
    clean = sorted(set(no_stale) - set(drifted))
    other = dict.fromkeys(rng.sample(clean, n // 200))
    for vm in other:
        other[vm] = rng.choice(("ERROR_down", "ERROR_up"))
    orphans = list(range(FIRST_VM + n, FIRST_VM + n + few))
    if orphans[-1] >= 1 << 17:  # ipv4(): 10.0.x.x and 10.1.x.x only, so never LEAKED (10.2.0.5)
        sys.exit(f"N = {n:,}: too many VMs for the addresses of {SUBNET}")
    free_address = ipv4(rng.choice(clean))
    nodes = [f"node{k}.ganeti.test" for k in range(n // PER_NODE + 1)]

    instances = []
    names: dict[int, tuple[str, str]] = {}
    for vm in sorted(set(no_stale) | set(orphans)):
        name, inst_uuid = f"{PREFIX}{vm}", str(uuid.UUID(int=rng.getrandbits(128)))
        names[vm] = (name, inst_uuid)
        inst = dict(base)
        inst.update(
            {
                "name": name,
                "uuid": inst_uuid,
                "status": other.get(vm, "running"),
                "pnode": nodes[vm % len(nodes)],
                "beparams": {**base["beparams"], "vcpus": cpu, "maxmem": ram, "minmem": ram, "memory": ram},
                "disk.sizes": [disk * 1024],
                "nic.names": [f"snf-nic-{vm}"],
                "nic.networks.names": ["snf-net-1"],
                "nic.macs": [mac(vm)],
                "nic.ips": [ipv4(vm)],
                "nic.uuids": [str(uuid.UUID(int=rng.getrandbits(128)))],
            }
        )
        drift = drift_of.get(vm, ("", ()))[0]
        if drift.startswith("operstate"):
            inst["status"] = rng.choice(("ADMIN_down", "USER_down"))
        if drift in ("flavor-cpu", "operstate+flavor"):
            inst["beparams"]["vcpus"] = cpu * 2
        elif drift == "flavor-ram":
            inst["beparams"]["maxmem"] = inst["beparams"]["memory"] = ram * 2
        elif drift == "nic-ip":
            inst["nic.ips"] = [f"172.16.{(vm >> 8) & 255}.{vm & 255}"]
        elif drift == "nic-mac":
            inst["nic.macs"] = [f"aa:00:00:ff:{(vm >> 8) & 255:02x}:{vm & 255:02x}"]
        elif drift == "nic-none":
            for key, value in base.items():
                if key.startswith("nic.") and isinstance(value, list):
                    inst[key] = []
        elif drift == "nic-unknown":  # a second NIC whose name names no row
            for key in [k for k, v in base.items() if k.startswith("nic.") and isinstance(v, list)]:
                inst[key] = [*inst[key], inst[key][0]]
            inst["nic.names"] = [f"snf-nic-{vm}", f"snf-nic-{vm + 10_000_000}"]
            inst["nic.macs"] = [mac(vm), f"aa:00:00:fe:{(vm >> 8) & 255:02x}:{vm & 255:02x}"]
            inst["nic.ips"] = [ipv4(vm), None]
        instances.append(inst)
    rng.shuffle(instances)  # RAPI lists them in its own order

    # Networks: snf-net-1 (every VM's NIC), snf-net-2 (the seed's private one: no instance on
    # this cluster), snf-net-3 (an orphan: no row in Synnefo). Ganeti lists in a network's
    # inst_list every instance with a NIC on it, in its own (name) order.
    on_net1 = sorted(i["name"] for i in instances if "snf-net-1" in i["nic.networks.names"])
    net_ips = [ip for i in instances for ip in i["nic.ips"]]
    template_net = network_template()
    private_cidr, private_link, private_prefix = PRIVATE
    networks = [
        ganeti_network(
            template_net,
            "snf-net-1",
            str(SUBNET),
            str(GATEWAY),
            "aa:00:00",
            "br0",
            ["nfdhcpd", "public"],
            offsets_in(SUBNET, net_ips),
            on_net1,
            rng,
        ),
        ganeti_network(
            template_net,
            "snf-net-2",
            private_cidr,
            None,
            private_prefix,
            private_link,
            ["private-filtered", "nfdhcpd", "private"],
            set(),
            [],
            rng,
        ),
        ganeti_network(
            template_net,
            f"snf-net-{ORPHAN_NETWORK}",
            "10.99.0.0/24",
            "10.99.0.1",
            "aa:00:20",
            "prv3",
            ["nfdhcpd", "private"],
            set(),
            [],
            rng,
        ),
    ]
    groups = json.loads((benchlib.FIXTURES / "rapi" / "groups-bulk.json").read_bytes())
    (group,) = groups
    group.update({"node_cnt": len(nodes), "node_list": nodes})

    # Jobs: N/1000 in flight (half on drifted instances: not judged), as many finished ones.
    k = max(2, n // 1000)
    busy = rng.sample(drifted, k // 2) + rng.sample(clean, k - k // 2)
    finished = rng.sample(drifted, k)  # a finished job does not make an instance busy
    jobs = []
    for job_id, (vm, status) in enumerate(
        [(vm, rng.choice(("queued", "waiting", "running"))) for vm in busy]
        + [(vm, rng.choice(("success", "error"))) for vm in finished],
        start=700_000,
    ):
        name, inst_uuid = names[vm]
        op = {"OP_ID": "OP_INSTANCE_REBOOT", "instance_name": name, "instance_uuid": inst_uuid}
        jobs.append({"id": job_id, "status": status, "ops": [op], "opstatus": [status]})

    busy_set = set(busy)
    expected = [(vm, "stale") for vm in stale] + [(vm, "orphan") for vm in orphans]
    for vm, (_, kinds) in drift_of.items():
        if vm not in busy_set:
            expected += [(vm, kind) for kind in kinds]
    expected.sort(key=lambda e: (e[0], KIND_ORDER[e[1]]))
    expected += [(ORPHAN_NETWORK, "network-orphan"), (1, "pool")]
    return Planted(
        n=n,
        instances_body=json.dumps(instances).encode(),
        jobs_body=json.dumps(jobs).encode(),
        networks_body=json.dumps(networks).encode(),
        groups_body=json.dumps(groups).encode(),
        nodes=[
            {"name": name, "bootid": str(uuid.UUID(int=k)), "offline": False} for k, name in enumerate(nodes)
        ],
        expected=expected,
        pool_text=f"1 in use but free: {free_address}; 1 taken but unused: {LEAKED}",
        free_address=free_address,
        stale=stale,
        instances=len(instances),
        drifted=Counter(drift for drift, _ in drift_of.values()),
        busy_drifted=len(busy_set & set(drifted)),
        other_status=len(other),
        on_net1=len(on_net1),
    )


def all_free(size: int) -> str:
    """A map of *size* free addresses (1 bits), padded with 0 bits to whole bytes, as Synnefo pads."""
    width = -(-size // 8) * 8
    return base64.b64encode((((1 << size) - 1) << (width - size)).to_bytes(width // 8, "big")).decode()


def load_database(server: PgServer, name: str, n: int, free_address: str) -> None:
    """N STARTED VM rows on backend 1 with a NIC and an IPv4 each; the seed's VMs on backend 2;
    network 1's subnet and pool widened to SUBNET, the pool agreeing with the addresses in use
    but for the drift planted: *free_address* free, LEAKED taken."""
    db = SynnefoDb(name, server.dsn(name), server)
    try:
        db.add_vms(range(FIRST_VM, FIRST_VM + n))
        db.query(  # as tests/e2e do: the seed's VMs are on another cluster
            'INSERT INTO db_backend (id, clustername, port, hash, "index", drained, offline, hypervisor, '
            "updated, mfree, mtotal, dfree, dtotal, pinst_cnt, ctotal, public) VALUES "
            "(2, 'other.example', 5080, 'x', 1, false, false, 'kvm', now(), 0, 0, 0, 0, 0, 0, true)"
        )
        db.query("UPDATE db_virtualmachine SET backend_id = 2 WHERE id < %s", (FIRST_VM,))
        # Networks 1 and 2 stay on backend 1 (the seed's db_backendnetwork rows 1 and 2), ACTIVE.
        got = db.query("SELECT id, network_id, backend_id, operstate FROM db_backendnetwork ORDER BY id")
        if [tuple(r) for r in got] != [(1, 1, BACKEND, "ACTIVE"), (2, 2, BACKEND, "ACTIVE")]:
            sys.exit(
                f"setup: db_backendnetwork is {got}, expected networks 1 and 2 ACTIVE on backend {BACKEND}"
            )
        db.query(
            "UPDATE db_subnet SET cidr = %s, gateway = %s WHERE id = 11 AND network_id = 1",
            (str(SUBNET), str(GATEWAY)),
        )
        db.query(  # the seed's addresses of subnet 11 move along: 203.0.113.x -> 10.0.0.x
            "UPDATE db_ipaddress SET address = '10.0.0.' || split_part(address, '.', 4) "
            "WHERE id = ANY(%s) AND subnet_id = 11",
            (list(SEED_IPS),),
        )
        db.add_flavor(*FLAVOR)
        db.query(
            "UPDATE db_virtualmachine SET operstate = 'STARTED', action = NULL, flavor_id = %s "
            "WHERE id >= %s",
            (FLAVOR[0], FIRST_VM),
        )
        db.query(  # the MAC and address as mac() and ipv4() make them
            'INSERT INTO db_networkinterface (id, name, userid, created, updated, "index", mac, '
            "firewall_profile, state, public, device_owner, machine_id, network_id) "
            "SELECT v.id, '', v.userid, v.created, v.updated, 0, "
            "'aa:00:00:' || substr(h, 1, 2) || ':' || substr(h, 3, 2) || ':' || substr(h, 5, 2), "
            "'DISABLED', 'ACTIVE', true, 'vm', v.id, 1 "
            "FROM db_virtualmachine v, LATERAL (SELECT lpad(to_hex(v.id), 6, '0') AS h) x WHERE v.id >= %s",
            (FIRST_VM,),
        )
        db.query(
            "INSERT INTO db_ipaddress (id, userid, project, shared_to_project, address, floating_ip, "
            "ipversion, created, updated, deleted, network_id, nic_id, serial_id, subnet_id) "
            "SELECT v.id, v.userid, v.project, false, "
            "'10.' || ((v.id >> 16) & 255) || '.' || ((v.id >> 8) & 255) || '.' || (v.id & 255), "
            "false, 4, v.created, v.created, false, 1, v.id, NULL, 11 "
            "FROM db_virtualmachine v WHERE v.id >= %s",
            (FIRST_VM,),
        )
        # Pool 1: every address of SUBNET but the network's and the broadcast, taken exactly for
        # the live rows of subnet 11 (floating one included), the gateway reserved externally (as
        # Ganeti reserves it); then the drift planted.
        used = [
            a
            for (a,) in db.query(
                "SELECT address FROM db_ipaddress WHERE subnet_id = 11 AND ipversion = 4 AND NOT deleted "
                "AND address IS NOT NULL"
            )
        ]
        outside = [a for a in used if ipaddress.ip_address(a) not in SUBNET]
        if len(used) != n + len(SEED_IPS) or outside or free_address not in used or LEAKED in used:
            sys.exit(f"setup: subnet 11 holds {len(used)} addresses, {len(outside)} outside {SUBNET}")
        fresh = ippool.Pool(1, all_free(POOL_SIZE), all_free(POOL_SIZE), POOL_SIZE, str(SUBNET), POOL_OFFSET)
        planted = [a for a in used if a != free_address] + [LEAKED]
        pool = ippool.repaired(fresh, planted, [str(GATEWAY)])
        taken = POOL_SIZE - sum(bin(b).count("1") for b in base64.b64decode(pool.available_map))
        if taken != len(planted):
            sys.exit(f"setup: pool 1 has {taken} addresses taken, expected {len(planted)}")
        db.query(
            "UPDATE db_ippooltable SET available_map = %s, reserved_map = %s, size = %s, base = %s, "
            '"offset" = %s WHERE id = 1 AND subnet_id = 11',
            (pool.available_map, pool.reserved_map, pool.size, pool.base, pool.offset),
        )
        db.query("ANALYZE")
        got = db.one(
            "SELECT count(*), count(DISTINCT n.mac), count(DISTINCT i.address) FROM db_virtualmachine v "
            "JOIN db_networkinterface n ON n.machine_id = v.id JOIN db_ipaddress i ON i.nic_id = n.id "
            "WHERE v.backend_id = %s AND v.operstate = 'STARTED'",
            (BACKEND,),
        )
        if got != (n, n, n):
            sys.exit(f"setup: {got} (VMs, MACs, addresses) on backend {BACKEND}, expected {n} of each")
        for vm in (FIRST_VM, FIRST_VM + n - 1):
            row = db.one(
                "SELECT n.mac, i.address FROM db_networkinterface n JOIN db_ipaddress i ON i.nic_id = n.id "
                "WHERE n.machine_id = %s",
                (vm,),
            )
            if row != (mac(vm), ipv4(vm)):
                sys.exit(f"setup: VM {vm} has {row}, the body says {(mac(vm), ipv4(vm))}")
    finally:
        db.close()


# ---------------------------------------------------------------- the child: one size, measured


def rss() -> tuple[int, int]:
    """(current, peak) resident set of this process, bytes: VmRSS and VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux carries the parent's peak over fork and exec into it.
    """
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> int:
    """Make the peak the current RSS (Linux >= 4.0: "5" to /proc/self/clear_refs); the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    now, peak = rss()
    if peak > now + (8 << 20):
        sys.exit(f"cannot reset the peak RSS (current {now}, peak {peak}): /proc/self/clear_refs ignored")
    return now


def floor_run(conn: Any, body: bytes, jobs_body: bytes) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    instances, jobs = json.loads(body), json.loads(jobs_body)
    assert len(instances) > 0 and isinstance(jobs, list)
    del instances, jobs  # freed as in ours, where the pass drops them once the snapshot is built
    t1 = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(FLOOR_SQL, (BACKEND,))
        rows = cur.fetchall()
    conn.commit()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(rows)


@dataclass
class Bodies:
    instances: bytes
    jobs: bytes
    networks: bytes
    groups: bytes
    nodes: list[dict]  # Rapi.nodes()' rows, parsed (the restart step's, not reconciliation's)


def ours_run(db: Database, vm_ids: set[int], b: Bodies) -> tuple[list[float], Any, int]:
    """What `snf-watcher reconcile --all` does between RAPI's answers and its findings."""
    body, jobs_body, nodes = b.instances, b.jobs, b.nodes
    t0 = time.perf_counter()
    instances, jobs = json.loads(body), json.loads(jobs_body)
    t1 = time.perf_counter()
    g = snapshot.ganeti(instances, nodes, jobs)  # nodes: Rapi.nodes()' rows, parsed
    del instances, jobs  # as in watcher._ganeti: the parsed bodies are garbage once the snapshot is built
    t2 = time.perf_counter()
    named = (id_from_name(i.name, PREFIX) for i in g.instances)  # watcher._reconcile, check_all
    ids = vm_ids | {i for i in named if i is not None}
    chosen, _ = reconcile.window(ids, 0, len(ids))
    checked = set(chosen)
    rows = db.reconcile_rows(None if checked >= ids else checked)  # as watcher._reconcile
    t3 = time.perf_counter()
    assert rows is not None
    look_up = reconcile.jobs_to_look_up(g, rows.values())
    jobs_seen, now = dict(g.jobs), datetime.now(UTC)  # no job to look up here: as the pass's `jobs`
    found = reconcile.diff(g, rows, jobs_seen, PREFIX, now, checked)
    t4 = time.perf_counter()
    # watcher._reconcile, after the VM diff: networks and IPv4 pools (Rapi.networks()/groups()
    # give the parsed bodies: json.loads here, their per-record check left out as for instances)
    g = snapshot.with_networks(g, json.loads(b.networks), json.loads(b.groups))
    t5 = time.perf_counter()
    networks = db.network_rows(reconcile.networks_to_read(g))
    pools = db.pools(i for i, n in networks.items() if n.backend is not None and not n.backend.deleted)
    t6 = time.perf_counter()
    found += reconcile.network_diff(g, networks, jobs_seen, now) + reconcile.pool_diff(g, pools)
    t7 = time.perf_counter()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6], found, len(look_up)


def child(params_file: str) -> int:
    """Measure one size; the result as JSON on stdout."""
    p = json.loads(Path(params_file).read_text())
    body, jobs_body = Path(p["instances"]).read_bytes(), Path(p["jobs"]).read_bytes()
    bodies = Bodies(
        body,
        jobs_body,
        Path(p["networks"]).read_bytes(),
        Path(p["groups"]).read_bytes(),
        json.loads(Path(p["nodes"]).read_text()),
    )
    cfg = config.from_mapping({"database": {"dsn": p["dsn"], "backend_id": BACKEND}})
    db = Database(cfg.database)
    db.connect()
    conn = psycopg2.connect(p["dsn"])
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")  # as Database.connect does
    conn.commit()
    gc.collect()
    out: dict[str, Any] = {}

    if p["mode"] == "floor-memory":
        rss0 = reset_peak()
        floor_run(conn, body, jobs_body)
        out["peak_growth"] = rss()[1] - rss0
        out["rss_before"] = rss0
        print(json.dumps(out))
        return 0

    rss0 = reset_peak()
    t0 = time.perf_counter()
    vms = db.vms()  # the pass reads it for the restart step and holds it; reconcile takes its ids
    out["vms_seconds"] = time.perf_counter() - t0
    vm_ids = set(vms)
    _, found, look_up = ours_run(db, vm_ids, bodies)
    out["peak_growth"] = rss()[1] - rss0  # ours, with the pass's vms() held, as in a pass
    out["rss_before"] = rss0
    out["findings"] = [(f.id, f.kind) for f in found]
    out["pool_texts"] = {f.id: f.database for f in found if f.kind == "pool"}
    out["look_up"] = look_up
    del found, vms
    gc.collect()

    floor_times: list[list[float]] = []
    ours_times: list[list[float]] = []
    for _ in range(p["repeat"]):
        loads, query, rows = floor_run(conn, body, jobs_body)
        floor_times.append([loads, query])
        gc.collect()
        stages, found, _ = ours_run(db, vm_ids, bodies)
        ours_times.append(stages)
        del found
        gc.collect()
    out["floor_rows"] = rows
    out["floor"], out["ours"] = floor_times, ours_times
    gc.disable()  # once more each without the cyclic GC: its share of the figures above
    try:
        out["floor_nogc"] = list(floor_run(conn, body, jobs_body)[:2])
        out["ours_nogc"] = ours_run(db, vm_ids, bodies)[0]
    finally:
        gc.enable()
    gc.collect()
    if p.get("profile"):
        profiler = cProfile.Profile()
        profiler.enable()
        ours_run(db, vm_ids, bodies)
        profiler.disable()
        profiler.dump_stats(p["profile"])
    conn.close()
    db.close()
    print(json.dumps(out))
    return 0


def run_child(params: dict, root: Path) -> dict:
    params_file = root / f"params-{params['n']}-{params['mode']}.json"
    params_file.write_text(json.dumps(params))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(params_file)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"the measuring child for N = {params['n']} failed ({proc.returncode}):\n{proc.stderr}")
    if proc.stderr.strip():
        print(proc.stderr, file=sys.stderr, end="")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the parent


@dataclass
class SizeResult:
    planted: Planted
    body_bytes: int
    net_bytes: int  # the networks and groups bodies
    floor: list[float]  # seconds per run
    floor_loads: list[float]
    floor_query: list[float]
    ours: list[float]
    # per run: loads, snapshot, rows, diff, networks (loads + with_networks), network_rows + pools,
    # network_diff + pool_diff
    stages: list[list[float]]
    floor_nogc: list[float]  # one run with the cyclic GC off: loads, query
    ours_nogc: list[float]  # one run with the cyclic GC off: the stages
    vms_seconds: float
    peak: int
    floor_peak: int
    rss_before: int
    findings: list[tuple[int, str]]
    pool_texts: dict[int, str]
    look_up: int
    floor_rows: int


def measure(server: PgServer, root: Path, n: int, seed: int, repeat: int, profile: str | None) -> SizeResult:
    planted = build(n, seed)
    name = server.new_database()
    load_database(server, name, n, planted.free_address)
    files = {}
    for what, data in (
        ("instances", planted.instances_body),
        ("jobs", planted.jobs_body),
        ("networks", planted.networks_body),
        ("groups", planted.groups_body),
        ("nodes", json.dumps(planted.nodes).encode()),
    ):
        files[what] = str(root / f"{what}-{n}.json")
        Path(files[what]).write_bytes(data)
    body_bytes = len(planted.instances_body) + len(planted.jobs_body)
    net_bytes = len(planted.networks_body) + len(planted.groups_body)
    # the child reads them from the files
    planted.instances_body = planted.jobs_body = planted.networks_body = planted.groups_body = b""
    benchlib.drop_dirty_pages()
    params = {"n": n, "dsn": server.dsn(name), "repeat": repeat, "profile": profile, **files}
    floor_mem = run_child({**params, "mode": "floor-memory", "profile": None}, root)
    got = run_child({**params, "mode": "main"}, root)
    server.drop_database(name)
    return SizeResult(
        planted=planted,
        body_bytes=body_bytes,
        net_bytes=net_bytes,
        floor=[sum(t) for t in got["floor"]],
        floor_loads=[t[0] for t in got["floor"]],
        floor_query=[t[1] for t in got["floor"]],
        ours=[sum(t) for t in got["ours"]],
        stages=got["ours"],
        floor_nogc=got["floor_nogc"],
        ours_nogc=got["ours_nogc"],
        vms_seconds=got["vms_seconds"],
        peak=got["peak_growth"],
        floor_peak=floor_mem["peak_growth"],
        rss_before=got["rss_before"],
        findings=[(vm, kind) for vm, kind in got["findings"]],
        pool_texts={int(k): v for k, v in got["pool_texts"].items()},
        look_up=got["look_up"],
        floor_rows=got["floor_rows"],
    )


def ms(values: list[float]) -> str:
    return f"best {1e3 * min(values):8.1f} ms, median {1e3 * statistics.median(values):8.1f} ms"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def compare(expected: list[tuple[int, str]], got: list[tuple[int, str]]) -> tuple[bool, str]:
    if got == expected:
        return True, f"{len(got)} findings, exactly the planted ones"
    missing = sorted((Counter(expected) - Counter(got)).elements())
    extra = sorted((Counter(got) - Counter(expected)).elements())
    text = f"{len(got)} findings, {len(expected)} planted: {len(missing)} missing {missing[:5]}, "
    text += f"{len(extra)} unexpected {extra[:5]}"
    if not missing and not extra:
        text += " (same findings, another order)"
    return False, text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", default="10000,100000", help="VM counts, comma-separated (default 10000,100000)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs of floor and ours (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", metavar="FILE", help="cProfile of one run of ours at the largest size")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (bodies) for inspection")
    p.add_argument("--child", metavar="PARAMS", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1000:
        p.error("--sizes: at least 1000 VMs each")
    repeat = max(1, args.repeat)

    report = benchlib.Report("reconcile_detect: snf-watcher reconcile --all, detection (fsync on)")
    root = Path(tempfile.mkdtemp(prefix="snf-bench-reconcile-"))
    server = None
    results = []
    try:
        server = PgServer(fsync=True)
        server.start()
        server.create_template()
        for n in sizes:
            results.append(
                measure(server, root, n, args.seed, repeat, args.profile if n == sizes[-1] else None)
            )
    finally:
        if server is not None:
            server.destroy()
        benchlib.remove_unless_kept(root, args.keep)

    report.info(
        f"best and median of {repeat} runs, floor and ours alternating, each size in a fresh process; "
        "PostgreSQL 15, fsync on; cyclic GC on"
    )
    checks = []
    for r in results:
        pl = r.planted
        floor, ours = min(r.floor), min(r.ours)
        per = 1e6 / pl.n
        best = min(range(len(r.ours)), key=r.ours.__getitem__)
        loads, snap, rows, diff, net_parse, net_rows, net_diff = r.stages[best]
        report.info(
            f"N = {pl.n:,} VM rows ({pl.n:,} NICs, {pl.n:,} IPv4 in pool 1, {SUBNET}), "
            f"{pl.instances:,} instances ({r.body_bytes / pl.instances:,.0f} B each, body "
            f"{mib(r.body_bytes)}); networks + groups bodies {r.net_bytes / 2**10:,.0f} KiB "
            f"(snf-net-1's inst_list {pl.on_net1:,} names)"
        )
        report.info(
            "  planted: "
            + ", ".join(f"{k} {v}" for k, v in sorted(pl.drifted.items()))
            + f"; {len(pl.stale)} stale, {sum(1 for _, k in pl.expected if k == 'orphan')} orphans; "
            f"{pl.busy_drifted} drifted ones busy (not judged); {pl.other_status} ERROR_down/up "
            f"(no finding); network {ORPHAN_NETWORK} orphan; pool 1: {pl.pool_text}"
        )
        report.info(
            f"  floor: {ms(r.floor)} = {floor * per:5.1f} us/VM  "
            f"(json.loads {1e3 * min(r.floor_loads):.1f} ms + one query {1e3 * min(r.floor_query):.1f} ms, "
            f"{r.floor_rows:,} rows)"
        )
        report.info(
            f"  ours:  {ms(r.ours)} = {ours * per:5.1f} us/VM; ratio to the floor {ours / floor:.2f}x"
        )
        report.info(
            f"    best run: json.loads {1e3 * loads:.1f} ms, snapshot.ganeti {1e3 * snap:.1f} ms, "
            f"ids + reconcile_rows {1e3 * rows:.1f} ms, jobs_to_look_up + diff {1e3 * diff:.1f} ms; "
            f"networks: json.loads + with_networks {1e3 * net_parse:.1f} ms, network_rows + pools "
            f"{1e3 * net_rows:.1f} ms, network_diff + pool_diff {1e3 * net_diff:.1f} ms"
        )
        report.info(
            f"    (the pass's Database.vms(), shared with the restart step: {1e3 * r.vms_seconds:.1f} ms)"
        )
        f0, o0 = sum(r.floor_nogc), sum(r.ours_nogc)
        stages = " + ".join(f"{1e3 * t:.1f}" for t in r.ours_nogc)
        report.info(
            f"  cyclic GC off (one run each): floor {1e3 * f0:.1f} ms "
            f"(json.loads {1e3 * r.floor_nogc[0]:.1f} + query {1e3 * r.floor_nogc[1]:.1f}), "
            f"ours {1e3 * o0:.1f} ms ({stages}); ratio {o0 / f0:.2f}x"
        )
        report.info(
            f"  memory: peak RSS growth ours {mib(r.peak)} (the pass's vms() held too), "
            f"floor {mib(r.floor_peak)}; "
            f"child RSS before {mib(r.rss_before)} (interpreter, body bytes, connections)"
        )
        kinds = Counter(k for _, k in r.findings)
        report.info("  findings: " + ", ".join(f"{k} {kinds[k]}" for k in sorted(kinds, key=KIND_ORDER.get)))
        ok, text = compare(pl.expected, r.findings)
        if r.pool_texts != {1: pl.pool_text}:
            ok, text = False, text + f"; pool findings say {r.pool_texts}, planted {{1: {pl.pool_text!r}}}"
        if r.look_up:
            ok, text = False, text + f"; {r.look_up} jobs to look up, expected none"
        checks.append((pl.n, ok, text))
    if args.profile:
        report.info(f"profile of one run of ours for N = {sizes[-1]:,}: {args.profile}")

    for r in results:
        ratio = min(r.ours) / min(r.floor)
        report.target(
            f"N = {r.planted.n:,}: ours {ratio:.2f}x the floor <= {TARGET_RATIO:.0f}x", ratio <= TARGET_RATIO
        )
    big = results[-1]
    report.target(
        f"N = {big.planted.n:,}: peak RSS growth {big.peak / 1e9:.2f} GB < {TARGET_PEAK / 1e9:.1f} GB",
        big.peak < TARGET_PEAK,
    )
    for n, ok, text in checks:
        report.target(f"N = {n:,}: {text}", ok)
    code = report.finish()
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)
    return code


if __name__ == "__main__":
    sys.exit(main())
