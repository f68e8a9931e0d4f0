"""Helpers for tests of whole watcher passes: the recorded cluster as Synnefo's seed knows it, and
the `watch` fixture, which runs the installed `snf-watcher` against the fake HTTPS ganeti-rapi
(tests/rapi_server.py) and a real PostgreSQL with the Synnefo seed."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
from conftest import command
from rapi_server import RAPI_FIXTURES

# seed.sql: VM -> (flavor: vCPUs, MiB, GiB), NICs (id, network, MAC, IPv4)
SEED = {
    "snf-101": (
        (2, 2048, 40),
        [(201, 1, "aa:00:00:4e:7a:01", "203.0.113.2"), (202, 2, "aa:00:10:4e:7a:02", "192.168.10.1")],
    ),
    "snf-102": ((4, 4096, 80), [(203, 1, "aa:00:00:4e:7a:03", "203.0.113.3")]),
}
INSTANCES = "/2/instances?bulk=1"
JOBS = "/2/jobs?bulk=1"
NETWORKS = "/2/networks?bulk=1"
# seed.sql's networks as Ganeti would hold them: network id -> (subnet, external reservations)
SEED_NETWORKS = {
    1: ("203.0.113.0/24", "203.0.113.0, 203.0.113.1, 203.0.113.255"),
    2: ("192.168.10.0/24", "192.168.10.0, 192.168.10.255"),
}
STARTUP_101 = "/2/instances/snf-101/startup"


def instances(statuses: dict[str, str], extra: int = 0) -> list[dict]:
    """The recorded instances, inst3 as snf-101 and inst2 as snf-102, with these statuses;
    *extra* more running instances to make the cluster bigger."""
    body = copy.deepcopy(json.loads((RAPI_FIXTURES / "instances-bulk.json").read_text()))
    names = {"inst3.ganeti.test": "snf-101", "inst2.ganeti.test": "snf-102"}
    for i in body:
        i["name"] = names.get(i["name"], i["name"])
        i["status"] = statuses.get(i["name"], i["status"])
        if i["name"] in SEED:  # what Synnefo's seed rows say it is: no drift for reconciliation
            (vcpus, mem, disk), nics = SEED[i["name"]]
            i["beparams"] = {**i["beparams"], "vcpus": vcpus, "maxmem": mem}
            i["disk.sizes"] = [disk * 1024]
            i["nic.names"] = [f"snf-nic-{n}" for n, _, _, _ in nics]
            i["nic.networks.names"] = [f"snf-net-{net}" for _, net, _, _ in nics]
            i["nic.macs"] = [mac for _, _, mac, _ in nics]
            i["nic.ips"] = [ip for _, _, _, ip in nics]
    template = body[0]
    body += [{**template, "name": f"big{n}.ganeti.test", "uuid": f"big-{n}"} for n in range(extra)]
    return body


def networks(groups: dict[int, list[str]] | None = None, **reserved: str) -> list[dict]:
    """The recorded network as seed.sql's networks snf-net-1 and snf-net-2, connected to the
    recorded node group "default" (or to *groups*), with reservations that agree with the seed's
    pools (or *reserved*, by "net1"/"net2")."""
    (template,) = json.loads((RAPI_FIXTURES / "networks-bulk.json").read_text())
    body = []
    for net_id, (cidr, kept) in SEED_NETWORKS.items():
        connected = (groups or {}).get(net_id, ["default"])
        body.append(
            {
                **template,
                "name": f"snf-net-{net_id}",
                "network": cidr,
                "external_reservations": reserved.get(f"net{net_id}", kept),
                "group_list": [[g, "bridged", "gnt-br0", ""] for g in connected],
                "inst_list": [],
            }
        )
    return body


def reconcile(watch, *args: str) -> tuple[int, dict]:
    """`snf-watcher reconcile --all --json *args`: exit code and report."""
    code, out, err = watch("reconcile", "--all", "--json", *args)
    assert out, err
    return code, json.loads(out)


def findings(report: dict) -> list[tuple]:
    return [(f["kind"], f["id"], f["action"]) for f in report["findings"]]


def job(job_id: int, status: str, instance: str = "snf-101") -> dict:
    return {
        "id": job_id,
        "status": status,
        "ops": [{"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": instance}],
        "opstatus": [status],
    }


@pytest.fixture
def watch(make_config, rapi_config, rapi_server, synnefo_db, tmp_path):
    """run(*args) -> (exit code, stdout, stderr) of `snf-watcher --config <cfg> *args`."""
    rapi = rapi_config()
    path = make_config(
        database={"dsn": synnefo_db.dsn, "backend_id": 1},
        rapi={
            "url": rapi.url,
            "ca_file": rapi.ca_file,
            "user": rapi.user,
            "password_file": rapi.password_file,
            "timeout": 2,
            "retries": 0,
        },
        watcher={
            "state_file": str(tmp_path / "state" / "state.json"),
            "pause_file": str(tmp_path / "state" / "pause.json"),
            "ganeti_pause_file": str(tmp_path / "watcher.pause"),
            "metrics_file": str(tmp_path / "snf_watcher.prom"),
            "max_tries": 2,
        },
    )
    rapi_server.set_body(INSTANCES, instances({"snf-101": "ERROR_down"}))
    rapi_server.set_body(JOBS, [])
    rapi_server.set_body(NETWORKS, networks())
    rapi_server.set_body("/2/jobs/21", job(21, "running", "snf-103"))  # VM 103's create job (seed: BUILD)

    def run(*args: str) -> tuple[int, str, str]:
        r = subprocess.run(
            [command("snf-watcher"), "--config", path, *args], capture_output=True, text=True, timeout=60
        )
        return r.returncode, r.stdout, r.stderr

    run.path = path
    run.state_file = tmp_path / "state" / "state.json"
    run.metrics = tmp_path / "snf_watcher.prom"
    run.ganeti_pause = tmp_path / "watcher.pause"
    run.ssconf_dir = tmp_path / "ssconf"
    return run
