"""The demo's cloud: a real Ganeti cluster, Synnefo's database, and snf-watcher set up on the
cluster's master the way an operator sets it up (a config file, the hooks, eventd, and the
cron pass, which the story runs by hand so that its report shows).

Ganeti is the single-node sandbox of tests/harness/ganeti-sandbox.sh; the database is a private
PostgreSQL 15 (tests/pgserver.py) loaded with Synnefo's schema and seed. Everything of the demo's
own lives under one directory (DEMO_DIR, /var/lib/snf-watcher-demo) and stays up after the
story, so the reader can look around; `Cloud.down()` takes it all away again.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harness the tests use too (tests/ is no package)

from pgserver import PgServer, SynnefoDb  # noqa: E402
from sandbox import (  # noqa: E402
    BRIDGE,
    GANETI_DIR,
    NODE,
    QUEUE_DIR,
    RAPI_PORT,
    Sandbox,
    add_args,
    add_ganeti_network,
    tail,
)

from snf_watcher import hooks, spool  # noqa: E402
from snf_watcher.outbox import Outbox  # noqa: E402

T = TypeVar("T")

BIN = Path(sys.executable).parent  # the project's commands, installed beside this interpreter
DEMO_DIR = Path(os.environ.get("SNF_DEMO_DIR", "/var/lib/snf-watcher-demo"))
DATABASE = "snf_apps"  # Cyclades' database, as Synnefo's docs name it
RAPI_USER = "snf-watcher"  # a RAPI user with write access, as the guide asks for
PREFIX = "snf-"  # Synnefo's BACKEND_PREFIX_ID
OWNER = "c4b3a6f0-5e0d-4b7e-9d0a-2f1e3c4d5a01"  # alice, of the seed
# Synnefo's public network 1 ("Internet" in the seed) as this cluster has it.
NETWORK_ID, NETWORK = 1, "snf-net-1"
SUBNET, GATEWAY, MAC_PREFIX = "203.0.113.0/24", "203.0.113.1", "aa:00:00"
# The demo's flavors: id -> (vCPUs, MiB of RAM). The instances are diskless.
FLAVORS = {64: (1, 64), 65: (2, 128)}
SMALL = 64


@dataclass(frozen=True)
class Vm:
    """One of the demo's VMs: Synnefo's id and name; Ganeti's name, its NIC and address follow."""

    id: int
    name: str

    @property
    def instance(self) -> str:
        return f"{PREFIX}{self.id}"

    @property
    def nic(self) -> int:  # Synnefo's NIC id, Ganeti's NIC name snf-nic-<id>
        return self.id + 1000

    @property
    def ip(self) -> str:
        return f"203.0.113.{self.id - 980}"  # 1001 -> .21: free in the seed's pool


class Paths:
    """Where the demo keeps each thing, all under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "snf-watcher.yaml"
        self.env = root / "env"  # `. env`: the demo's commands, config and database in a shell
        self.outbox = root / "outbox.sqlite"
        self.spool = root / "spool"
        self.state = root / "state.json"
        self.pause = root / "pause.json"
        self.metrics = root / "snf_watcher.prom"
        self.logs = root / "log"
        self.run = root / "run"  # the hook's settings cache
        self.pg = root / "pg"
        self.rapi_password = root / "rapi.password"
        self.hook = root / "snf-ganeti-hook-demo"
        self.eventd_pid = root / "eventd.pid"


class Cloud:
    def __init__(self, root: Path = DEMO_DIR) -> None:
        self.paths = Paths(root)
        self.sandbox = Sandbox(self.paths.logs / "ganeti-sandbox.log", RAPI_USER, self._rapi_password())
        self._pg: PgServer | None = None
        self._db: SynnefoDb | None = None
        self._eventd: subprocess.Popen[bytes] | None = None

    def _rapi_password(self) -> str:
        try:
            return self.paths.rapi_password.read_text().strip()
        except FileNotFoundError:
            return secrets.token_urlsafe(18)

    @property
    def exists(self) -> bool:
        return self.paths.root.exists()

    # ------------------------------------------------------------ setting up

    def make_dirs(self) -> None:
        """The demo's directory: open to the PostgreSQL user (its server lives in pg/), the rest root's."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.root.chmod(0o755)
        for d in (self.paths.spool, self.paths.logs, self.paths.run):
            d.mkdir(mode=0o700, exist_ok=True)
        self.paths.rapi_password.write_text(self.sandbox.rapi_password + "\n")
        self.paths.rapi_password.chmod(0o600)

    def ganeti_up(self) -> None:
        """A fresh cluster (job ids and instances from scratch), its RAPI write user ours."""
        self.sandbox.run("destroy")
        self.sandbox.run("up")

    def database_up(self) -> None:
        """PostgreSQL in pg/, kept running after the demo exits, with Synnefo's schema and seed."""
        self.pg.start()
        self.pg.create_database(DATABASE)

    @property
    def pg(self) -> PgServer:
        if self._pg is None:
            self._pg = PgServer(base=self.paths.pg, keep=True)  # the server an earlier run left
        return self._pg

    @property
    def db(self) -> SynnefoDb:
        if self._db is None:
            self._db = SynnefoDb(DATABASE, self.pg.dsn(DATABASE), self.pg)
        return self._db

    def synnefo_data(self) -> None:
        """This cluster as Synnefo's backend 1: the seed's VMs on another cluster, two flavors, and
        public network 1 on this backend, in the database and in Ganeti as Synnefo creates it."""
        db = self.db
        db.seed_elsewhere()
        for flavor, (cpu, ram) in FLAVORS.items():
            db.add_flavor(flavor, cpu, ram, 1)
        db.query("UPDATE db_network SET link = %s WHERE id = %s", (BRIDGE, NETWORK_ID))
        db.add_backend_network(NETWORK_ID, MAC_PREFIX)
        add_ganeti_network(NETWORK, SUBNET, "default", gateway=GATEWAY, mac_prefix=MAC_PREFIX)

    def write_config(self) -> None:
        p = self.paths
        config = {
            # The sandbox's node runs in namespaces of its own: this host's name is not the node's.
            "ganeti": {"queue_dir": QUEUE_DIR, "ssconf_dir": GANETI_DIR, "node_name": NODE},
            "outbox": {"path": str(p.outbox), "spool_dir": str(p.spool)},
            "logging": {"target": "file", "dir": str(p.logs)},
            "database": {
                "dsn": self.pg.dsn(DATABASE),
                "backend_id": 1,
                "max_retry_interval": 2.0,  # the demo's outage is short: retry often
            },
            "rapi": {
                "url": f"https://127.0.0.1:{RAPI_PORT}",  # the sandbox's RAPI, forwarded to loopback
                "ca_file": f"{GANETI_DIR}/rapi.pem",
                "user": RAPI_USER,
                "password_file": str(p.rapi_password),
            },
            "watcher": {
                "state_file": str(p.state),
                "pause_file": str(p.pause),
                "metrics_file": str(p.metrics),
                "reconcile_min": 300.0,  # = interval: every pass checks every VM (few here)
            },
            "instance_prefix": PREFIX,
        }
        header = "# The demo's snf-watcher config (demo/cloud.py); see etc/snf-watcher.yaml for every key.\n"
        p.config.write_text(header + yaml.safe_dump(config, sort_keys=False))
        p.env.write_text(
            "# . this file: the demo's commands, config and database in your shell\n"
            f"export PATH='{BIN}':\"$PATH\"\n"
            f"export SNF_WATCHER_CONFIG='{p.config}'\n"
            f"export PGHOST='{self.pg.socketdir}' PGPORT={self.pg.port}\n"
            f"export PGUSER=postgres PGDATABASE={DATABASE}\n"
        )

    def write_hook_wrapper(self) -> Path:
        """Ganeti runs hooks with an empty environment and no arguments: a wrapper names the config."""
        p = self.paths
        p.hook.write_text(
            "#!/bin/sh\n"
            "# snf-watcher demo: snf-ganeti-hook with the demo's config (Ganeti clears the environment)\n"
            f"SNF_WATCHER_RUNDIR='{p.run}'\n"
            "export SNF_WATCHER_RUNDIR\n"
            f"exec '{BIN / 'snf-ganeti-hook'}' --config '{p.config}' \\\n"
            f"    2>>'{p.logs / 'snf-ganeti-hook.stderr'}'\n"
        )
        p.hook.chmod(0o755)
        return p.hook

    def hooks_installed(self) -> list[str]:
        return [
            link
            for link in hooks.link_paths(hooks.HOOKS_DIR)
            if os.path.realpath(link) == str(self.paths.hook)
        ]

    # ------------------------------------------------------------ snf-ganeti-eventd

    @property
    def eventd_log(self) -> Path:
        return self.paths.logs / "snf-ganeti-eventd.log"

    def start_eventd(self, timeout: float = 30) -> int:
        """Start eventd in a session of its own (it outlives the demo); wait until it has caught up
        with the queue and connected to the database. Its pid."""
        start = self.eventd_log.stat().st_size if self.eventd_log.exists() else 0
        with (self.paths.logs / "snf-ganeti-eventd.stderr").open("ab") as err:
            self._eventd = subprocess.Popen(
                [str(BIN / "snf-ganeti-eventd"), "--config", str(self.paths.config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.paths.eventd_pid.write_text(f"{self._eventd.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(self.eventd_log, start)
            if "caught up" in text and "delivering to" in text:
                return self._eventd.pid
            if self._eventd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"snf-ganeti-eventd did not start:\n{tail(self.eventd_log, 20)}")
            time.sleep(0.05)

    def stop_eventd(self) -> None:
        """SIGTERM, as systemd stops it; wait until it is gone."""
        pid = self._eventd_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid):
            if self._eventd is not None:
                self._eventd.poll()  # our child: reap it
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.paths.eventd_pid.unlink(missing_ok=True)
        self._eventd = None

    def _eventd_pid(self) -> int | None:
        """The pid in eventd.pid, if that process is still our eventd."""
        try:
            pid = int(self.paths.eventd_pid.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"snf-ganeti-eventd" in cmdline and _alive(pid) else None

    @staticmethod
    def log_since(path: Path, offset: int) -> str:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ Synnefo's side

    def synnefo_creates(self, vm: Vm, flavor: int = SMALL) -> None:
        """What Synnefo writes before it submits the create job: the VM in BUILD, its NIC in BUILD
        (no MAC until Ganeti makes one; the address Ganeti reports is taken from the pool then)."""
        db = self.db
        db.add_vms(range(vm.id, vm.id + 1))
        db.query(
            "UPDATE db_virtualmachine SET name = %s, operstate = 'BUILD', action = 'CREATE', "
            "flavor_id = %s, backend_id = 1, deleted = false, backendjobid = NULL, backendopcode = NULL, "
            "backendjobstatus = NULL, backendtime = '0001-01-01 00:00:00+00', buildpercentage = 0, "
            "created = now(), "
            "updated = now() "
            "WHERE id = %s",
            (vm.name, flavor, vm.id),
        )
        db.query(
            'INSERT INTO db_networkinterface (id, name, userid, created, updated, "index", mac, '
            "firewall_profile, state, public, device_owner, machine_id, network_id) VALUES "
            "(%s, '', %s, now(), now(), 0, NULL, NULL, 'BUILD', true, 'vm', %s, %s)",
            (vm.nic, OWNER, vm.id, NETWORK_ID),
        )

    def synnefo_attaches(self, vm: Vm, nic: int, age: str) -> None:
        """A NIC Synnefo asked for *age* ago (an interval) whose job never ran: its row waits in BUILD."""
        self.db.query(
            'INSERT INTO db_networkinterface (id, name, userid, created, updated, "index", mac, '
            "firewall_profile, state, public, device_owner, machine_id, network_id) VALUES "
            "(%s, '', %s, now() - %s::interval, now() - %s::interval, 1, NULL, NULL, 'BUILD', true, 'vm', "
            "%s, %s)",
            (nic, OWNER, age, age, vm.id, NETWORK_ID),
        )

    @staticmethod
    def create_args(vm: Vm, flavor: int = SMALL) -> list[str]:
        """The create job Synnefo submits (through RAPI; here with gnt-instance): started, one NIC."""
        cpu, ram = FLAVORS[flavor]
        nic = f"0:name=snf-nic-{vm.nic},network={NETWORK},ip={vm.ip}"
        return add_args(vm.instance, "--net", nic, "-B", f"vcpus={cpu},memory={ram}M", start=True)

    def vm_row(self, vm: Vm) -> dict[str, Any]:
        ((row,),) = self.db.query("SELECT row_to_json(v) FROM db_virtualmachine v WHERE id = %s", (vm.id,))
        return row

    def nic_rows(self, vm: Vm) -> list[tuple]:
        """(NIC id, state, MAC, IPv4 address or None) of the VM's NICs, by id."""
        return self.db.query(
            "SELECT n.id, n.state, n.mac, ip.address FROM db_networkinterface n "
            "LEFT JOIN db_ipaddress ip ON ip.nic_id = n.id AND NOT ip.deleted "
            "WHERE n.machine_id = %s ORDER BY n.id",
            (vm.id,),
        )

    def address_in_use(self, address: str) -> bool:
        return bool(
            self.db.query("SELECT 1 FROM db_ipaddress WHERE address = %s AND NOT deleted", (address,))
        )

    # ------------------------------------------------------------ snf-watcher's commands

    def snf(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`snf-watcher ARGS` with the demo's config, as an operator runs it."""
        return subprocess.run(
            [str(BIN / "snf-watcher"), "--config", str(self.paths.config), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def pending(self) -> int:
        """Messages waiting for the database: in the spool, and in the outbox."""
        return len(spool.names(str(self.paths.spool))) + self._outbox(Outbox.pending_count)

    def delivered(self) -> int:
        """Messages applied to the database since the outbox was made (its counter)."""
        return self._outbox(Outbox.counters).get("delivered", 0)

    def _outbox(self, read: Callable[[Outbox], T]) -> T:
        box = Outbox(str(self.paths.outbox))
        try:
            return read(box)
        finally:
            box.close()

    # ------------------------------------------------------------ the database going away

    def stop_database(self) -> None:
        self.db.close()
        self.pg.stop()

    def start_database(self) -> None:
        self.pg.start()

    # ------------------------------------------------------------ tearing down

    def down(self) -> list[str]:
        """Stop and remove everything the demo made; what was done, one line each."""
        if not self.exists:
            return [f"no demo is up (there is no {self.paths.root})"]
        done = []
        if self._eventd_pid() is not None:
            self.stop_eventd()
            done.append("snf-ganeti-eventd stopped")
        if self.hooks_installed():
            removed = hooks.remove(hooks.HOOKS_DIR)
            done.append(f"{len(removed)} hook links removed from {hooks.HOOKS_DIR}")
        if (self.paths.pg / "data").exists():
            self.pg.destroy()
            done.append("PostgreSQL stopped and its data removed")
        self.paths.logs.mkdir(parents=True, exist_ok=True)  # for the sandbox's log
        self.sandbox.run("destroy")
        done.append("the Ganeti sandbox cluster destroyed (ganeti-sandbox.sh destroy)")
        shutil.rmtree(self.paths.root, ignore_errors=True)
        done.append(f"{self.paths.root} removed")
        return done


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def job_end(job_id: int) -> float:
    """When Ganeti ended the job (its end_timestamp), from the job file, live or archived."""
    candidates = [
        Path(QUEUE_DIR) / f"job-{job_id}",
        Path(QUEUE_DIR) / "archive" / str(job_id // 10000) / f"job-{job_id}",
    ]
    for path in candidates:
        try:
            sec, usec = json.loads(path.read_text())["end_timestamp"]
            return sec + usec / 1e6
        except (FileNotFoundError, TypeError):
            continue
    raise RuntimeError(f"job {job_id} has not ended (no end_timestamp in {candidates[0]})")
