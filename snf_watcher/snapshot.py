"""One pass's picture of Ganeti and of Synnefo's rows, as plain data (pure).

The watcher decides from snapshots, never from live queries made while it
decides: what it acts on is what it saw, and the decision can be tested from
recorded RAPI bodies. Three bulk RAPI answers make the Ganeti side (instances,
nodes, live jobs), whatever the cluster size; reconciliation adds two more
(networks, node groups). The RAPI bodies are checked
here, field by field, so that a surprising answer is a clear error and not a
wrong restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from snf_watcher.events import NETWORK_PREFIX, NIC_PREFIX, GanetiNic, id_from_name
from snf_watcher.messages import FINAL_STATUSES

IN_FLIGHT = frozenset({"queued", "waiting", "running", "canceling"})
# A job whose outcome is known for good: finished, or "gone" (Ganeti does not know its id).
ENDED = FINAL_STATUSES | {"gone"}


class BadSnapshot(Exception):
    """A RAPI body that does not have the shape Ganeti gives; the text names the field."""


@dataclass(frozen=True)
class Instance:
    name: str
    uuid: str
    status: str  # Ganeti's run status: running, ERROR_down, USER_down, ...
    pnode: str
    # What reconciliation compares with Synnefo's row:
    vcpus: int | None = None
    maxmem: int | None = None  # MiB
    disk_sizes: tuple[int, ...] = ()  # MiB, in disk order
    nics: tuple[GanetiNic, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    bootid: str | None
    offline: bool


@dataclass(frozen=True)
class Network:
    name: str
    cidr: str | None
    groups: tuple[str, ...]  # the node groups it is connected to
    instances: tuple[str, ...]  # the instances with a NIC on it
    reserved: tuple[str, ...]  # Ganeti's external reservations: addresses no instance may get


@dataclass(frozen=True)
class Vm:
    """What Synnefo's row says its owner wants."""

    id: int
    operstate: str
    deleted: bool
    task: str | None = None
    task_job_id: int | None = None


@dataclass(frozen=True)
class Ganeti:
    instances: tuple[Instance, ...]
    nodes: Mapping[str, Node]
    # Live jobs: instance name -> id of a job in flight that names it, and the
    # same for node names (a node evacuation moves its instances).
    busy_instances: Mapping[str, int] = field(default_factory=dict)
    busy_nodes: Mapping[str, int] = field(default_factory=dict)
    # Status of every live job by id (finished ones included until archived).
    jobs: Mapping[int, str] = field(default_factory=dict)
    # Network name -> id of a job in flight that names it.
    busy_networks: Mapping[str, int] = field(default_factory=dict)
    # Reconciliation's: the networks and the node groups (`with_networks`).
    networks: tuple[Network, ...] = ()
    groups: tuple[str, ...] = ()


def ganeti(instances: Any, nodes: Any, jobs: Any) -> Ganeti:
    """Build the Ganeti side from the bodies of /2/instances?bulk=1, the node query and /2/jobs?bulk=1."""
    busy_instances: dict[str, int] = {}
    busy_nodes: dict[str, int] = {}
    busy_networks: dict[str, int] = {}
    statuses: dict[int, str] = {}
    for job in _list(jobs, "jobs"):
        job_id, status = _get(job, "id", int, "job"), _get(job, "status", str, "job")
        statuses[job_id] = status
        if status not in IN_FLIGHT:
            continue
        for op in job.get("ops") or ():
            if isinstance(op, dict):
                for name in _instances_named(op):
                    busy_instances.setdefault(name, job_id)
                node = op.get("node_name")
                if str(op.get("OP_ID", "")).startswith("OP_NODE_") and isinstance(node, str):
                    busy_nodes.setdefault(node, job_id)
                network = op.get("network_name")
                if isinstance(network, str) and network:
                    busy_networks.setdefault(network, job_id)
    return Ganeti(
        instances=tuple(_instance(i) for i in _list(instances, "instances")),
        nodes={
            n.name: n
            for n in (
                Node(
                    name=_get(n, "name", str, "node"),
                    bootid=n.get("bootid") if isinstance(n.get("bootid"), str) and n.get("bootid") else None,
                    offline=bool(n.get("offline")),
                )
                for n in _list(nodes, "nodes")
            )
        },
        busy_instances=busy_instances,
        busy_nodes=busy_nodes,
        jobs=statuses,
        busy_networks=busy_networks,
    )


def with_networks(g: Ganeti, networks: Any, groups: Any) -> Ganeti:
    """Add the bodies of /2/networks?bulk=1 and /2/groups?bulk=1 (taken after the jobs)."""
    return replace(
        g,
        networks=tuple(_network(n) for n in _list(networks, "networks")),
        groups=tuple(_get(grp, "name", str, "group") for grp in _list(groups, "groups")),
    )


def _network(n: dict[str, Any]) -> Network:
    name = _get(n, "name", str, "network")
    for key in ("group_list", "inst_list"):
        if not isinstance(n.get(key) or [], list):
            raise BadSnapshot(f"RAPI network {name}: {key} is {n.get(key)!r}, expected list")
    groups = []
    for entry in n.get("group_list") or ():
        # [group, mode, link, vlan] since Ganeti 2.12; "group(mode, link)" before
        group = entry[0] if isinstance(entry, list) and entry else entry
        if not isinstance(group, str):
            raise BadSnapshot(f"RAPI network {name}: group_list entry {entry!r} names no group")
        groups.append(group.split("(", 1)[0].strip())
    reserved = n.get("external_reservations") or ""
    if not isinstance(reserved, str):
        raise BadSnapshot(f"RAPI network {name}: external_reservations is {reserved!r}, expected str")
    cidr = n.get("network")
    return Network(
        name=name,
        cidr=cidr if isinstance(cidr, str) and cidr else None,
        groups=tuple(groups),
        instances=tuple(i for i in n.get("inst_list") or () if isinstance(i, str)),
        reserved=tuple(a.strip() for a in reserved.split(",") if a.strip()),
    )


def _instance(i: dict[str, Any]) -> Instance:
    beparams = i.get("beparams") if isinstance(i.get("beparams"), dict) else {}
    return Instance(
        name=_get(i, "name", str, "instance"),
        uuid=_get(i, "uuid", str, "instance"),
        status=_get(i, "status", str, "instance"),
        pnode=_get(i, "pnode", str, "instance"),
        vcpus=_int(beparams.get("vcpus")),
        maxmem=_int(beparams.get("maxmem")),
        disk_sizes=tuple(x for x in i.get("disk.sizes") or () if _int(x) is not None),
        nics=_nics(i),
    )


def _nics(i: dict[str, Any]) -> tuple[GanetiNic, ...]:
    """RAPI's parallel nic.* lists as the NICs a net-status message would carry."""
    macs = i.get("nic.macs") or []
    columns = [i.get(k) or [None] * len(macs) for k in ("nic.names", "nic.networks.names", "nic.ips")]
    if not isinstance(macs, list) or any(not isinstance(c, list) or len(c) != len(macs) for c in columns):
        raise BadSnapshot(f"RAPI instance {i.get('name')}: the nic.* lists do not line up")
    return tuple(
        GanetiNic(
            index=index,
            nic_id=id_from_name(name, NIC_PREFIX) if isinstance(name, str) else None,
            name=name if isinstance(name, str) else None,
            network_id=id_from_name(network, NETWORK_PREFIX) if isinstance(network, str) else None,
            mac=mac if isinstance(mac, str) else None,
            ipv4=ip if isinstance(ip, str) and ip else None,
        )
        for index, (mac, name, network, ip) in enumerate(zip(macs, *columns, strict=True))
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _instances_named(op: dict[str, Any]) -> Iterable[str]:
    """Every instance an op names: a job acting on it makes it busy, whatever else it does."""
    name = op.get("instance_name")
    if isinstance(name, str) and name:
        yield name
    names = op.get("instances")
    if isinstance(names, list):
        yield from (n for n in names if isinstance(n, str) and n)
    if op.get("OP_ID") in ("OP_TAGS_SET", "OP_TAGS_DEL") and op.get("kind") == "instance":
        tagged = op.get("name")
        if isinstance(tagged, str) and tagged:
            yield tagged


def _list(body: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(isinstance(x, dict) for x in body):
        raise BadSnapshot(f"RAPI's {what} answer is not a list of objects: {str(body)[:80]}")
    return body


def _get(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        ident = obj.get("name", obj.get("id", "?"))
        raise BadSnapshot(f"RAPI {what} {ident}: {key} is {value!r}, expected {kind.__name__}")
    return value
