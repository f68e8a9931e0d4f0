"""The Synnefo database adapter: lock rows, fold events into them, write the result.

One call of `Database.apply` is one transaction for a batch of events:

1. lock the batch's VM rows, then its db_backendnetwork rows, each in id
   order (every deliverer locks in the same order, so they cannot deadlock
   each other), and read their order keys from `snf_watcher_order`;
2. fold each row's events with apply.py, lock the NIC rows and IP pools the
   plans touch (again in id order) and work out the NIC changes;
3. write all the plans inside one savepoint, the plain statements in one
   round trip. If the database refuses that (a constraint, a value too long,
   an address outside every subnet), it is rolled back and each row's plan is
   written in a savepoint of its own; a row whose plan is refused has its
   events replayed one message per savepoint, and the message that fails
   goes to the dead letters with the error; the rest commit.

Constraints are checked per statement (`SET CONSTRAINTS ALL IMMEDIATE`):
Synnefo's foreign keys are deferred, which would otherwise fail the whole
batch at COMMIT instead of the one message that broke them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import Json

from snf_watcher import apply, ippool, reconcile
from snf_watcher.config import DatabaseConfig
from snf_watcher.events import BadMessage, Correction, Event, Key, NetworkEvent, OpStatus, VmEvent
from snf_watcher.snapshot import Vm

log = logging.getLogger(__name__)

ORDER_TABLE = """
CREATE TABLE IF NOT EXISTS snf_watcher_order (
    object    varchar(16) NOT NULL,  -- 'vm' (db_virtualmachine.id) or 'network' (db_backendnetwork.id)
    object_id integer     NOT NULL,
    keys      jsonb       NOT NULL,  -- aspect -> order key of the message that last wrote it
    PRIMARY KEY (object, object_id)
)"""

# What delivery and the watcher do to each table (the README lists the same).
PRIVILEGES = {
    "db_virtualmachine": ("SELECT", "UPDATE"),
    "db_networkinterface": ("SELECT", "UPDATE", "INSERT", "DELETE"),
    "db_ipaddress": ("SELECT", "UPDATE", "INSERT", "DELETE"),
    "db_ippooltable": ("SELECT", "UPDATE"),
    "db_volume": ("SELECT", "UPDATE"),
    "db_backendnetwork": ("SELECT", "UPDATE", "INSERT", "DELETE"),
    "db_ipaddresshistory": ("INSERT", "DELETE"),
    "db_virtualmachinediagnostic": ("INSERT", "DELETE"),
    "db_networkinterface_security_groups": ("INSERT", "DELETE"),
    "db_flavor": ("SELECT",),
    "db_network": ("SELECT",),
    "db_subnet": ("SELECT",),
    "db_backend": ("SELECT",),
    "snf_watcher_order": ("SELECT", "INSERT", "UPDATE"),  # ours, made on the first connection
}

VM_COLUMNS = (
    "id",
    "backend_id",
    "userid",
    "project",
    "deleted",
    "operstate",
    "flavor_id",
    "task",
    "task_job_id",
    "buildpercentage",
    "backendjobid",
    "backendopcode",
    "backendjobstatus",
    "backendlogmsg",
    "backendtime",
    "updated",
)
NETWORK_COLUMNS = (
    "id",
    "network_id",
    "deleted",
    "operstate",
    "backendjobid",
    "backendopcode",
    "backendjobstatus",
    "backendlogmsg",
    "backendtime",
    "updated",
)
READ_ONLY = frozenset({"id", "backend_id", "userid", "project", "network_id"})

# Errors that belong to one message; anything else (connection, server shutdown,
# deadlock, missing table) is the database's problem and the batch is retried.
MESSAGE_ERRORS = (psycopg2.IntegrityError, psycopg2.DataError, BadMessage, ippool.PoolError)


class DatabaseDown(Exception):
    """The database cannot be reached or refused the batch for a reason not in any message."""


@dataclass
class BatchResult:
    applied: list[Any] = field(default_factory=list)
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    dead: list[tuple[Any, str]] = field(default_factory=list)


def safe_dsn(dsn: str) -> str:
    """The DSN as it may be logged: libpq's own parse, without any password."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "<unparsable dsn>"
    params.pop("password", None)
    return psycopg2.extensions.make_dsn(**params)


def read_password(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().rstrip("\n")
    except OSError as e:
        raise DatabaseDown(f"cannot read database.password_file {path}: {e.strerror}") from None


class Database:
    """A connection to Synnefo's database and the batch transaction on it."""

    def __init__(self, cfg: DatabaseConfig, clock: Any = None) -> None:
        if cfg.dsn is None or cfg.backend_id is None:
            raise ValueError("database.dsn and database.backend_id are required for delivery")
        self.cfg = cfg
        self.backend_id = cfg.backend_id
        self.conn: psycopg2.extensions.connection | None = None
        self.clock = clock or (lambda: datetime.now(UTC))

    # -------------------------------------------------------- connection

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        kwargs: dict[str, Any] = {
            "connect_timeout": self.cfg.connect_timeout,
            "application_name": "snf-watcher",
        }
        if self.cfg.password_file:
            kwargs["password"] = read_password(self.cfg.password_file)
        try:
            conn = psycopg2.connect(self.cfg.dsn, **kwargs)
            with conn, conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute("SELECT to_regclass('snf_watcher_order')")
                if cur.fetchone()[0] is None:  # CREATE ... IF NOT EXISTS needs CREATE on the schema even then
                    cur.execute(ORDER_TABLE)
                cur.execute("SELECT 1 FROM db_backend WHERE id = %s", (self.backend_id,))
                if cur.fetchone() is None:
                    conn.close()
                    raise DatabaseDown(f"database.backend_id {self.backend_id} is not in db_backend")
        except psycopg2.Error as e:
            raise DatabaseDown(_one_line(e)) from None
        self.conn = conn

    def access(self) -> tuple[str, bool, list[str]]:
        """This backend's cluster name and offline flag, and each privilege the user lacks
        (e.g. "UPDATE on db_volume"): what `snf-watcher check-config` reports."""
        tables = [t for t, privileges in PRIVILEGES.items() for _ in privileges]
        wanted = [p for privileges in PRIVILEGES.values() for p in privileges]
        # Synnefo's tables have an "id serial" (snf_watcher_order has no id)
        inserted = [t for t, p in PRIVILEGES.items() if "INSERT" in p and t.startswith("db_")]
        with self._transaction() as cur:
            cur.execute("SELECT clustername, offline FROM db_backend WHERE id = %s", (self.backend_id,))
            cluster, offline = cur.fetchone()
            cur.execute(
                "SELECT p || ' on ' || t FROM unnest(%s::text[], %s::text[]) AS x(t, p)"
                " WHERE NOT has_table_privilege(t, p)",
                (tables, wanted),
            )
            missing = [row[0] for row in cur.fetchall()]
            cur.execute(  # inserting a row takes the next value of its id's sequence
                "SELECT 'USAGE on ' || s FROM unnest(%s::text[]) AS t, pg_get_serial_sequence(t, 'id') AS s"
                " WHERE s IS NOT NULL AND NOT has_sequence_privilege(s, 'USAGE') ORDER BY t",
                (inserted,),
            )
            missing += [row[0] for row in cur.fetchall()]
        return cluster, offline, missing

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction; a database error becomes DatabaseDown, a lost
        connection is dropped (the next call connects again)."""
        self.connect()
        assert self.conn is not None
        try:
            with self.conn, self.conn.cursor() as cur:
                yield cur
        except psycopg2.Error as e:
            if isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError)) or self.conn.closed:
                self.close()
            raise DatabaseDown(_one_line(e)) from None

    # -------------------------------------------------------- the watcher's snapshot

    def vms(self) -> dict[int, Vm]:
        """Every VM row of this backend, as far as the watcher needs it: what its owner wants."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT id, operstate, deleted, task, task_job_id FROM db_virtualmachine "
                "WHERE backend_id = %s",
                (self.backend_id,),
            )
            return {row[0]: Vm(*row) for row in cur.fetchall()}

    def reconcile_rows(self, vm_ids: Iterable[int] | None) -> dict[int, reconcile.Row] | None:
        """These VMs' rows (None: all of this backend) with flavor and NICs, as reconciliation
        compares them; None when db_backend says this backend is offline (nobody judges its VMs)."""
        with self._transaction() as cur:
            cur.execute("SELECT offline FROM db_backend WHERE id = %s", (self.backend_id,))
            if cur.fetchone()[0]:
                return None
            which = "" if vm_ids is None else " AND v.id = ANY(%s)"
            cur.execute(
                "SELECT v.id, v.operstate, v.deleted, v.action, f.id, f.cpu, f.ram, f.disk, "
                "f.volume_type_id, v.task, v.task_job_id, v.backendjobid, v.created, v.updated "
                "FROM db_virtualmachine v LEFT JOIN db_flavor f ON f.id = v.flavor_id "
                f"WHERE v.backend_id = %s{which}",
                (self.backend_id,) if vm_ids is None else (self.backend_id, sorted(vm_ids)),
            )
            rows = cur.fetchall()
            ids = None if vm_ids is None else [r[0] for r in rows]
            nics = nic_rows(cur, ids, backend_id=self.backend_id)
        return {
            r[0]: reconcile.Row(
                *r[:4],
                apply.Flavor(*r[4:9]) if r[4] is not None else None,
                *r[9:],
                nics=tuple(nics.get(r[0], ())),
            )
            for r in rows
        }

    def network_rows(self, network_ids: Iterable[int]) -> dict[int, reconcile.NetworkRow]:
        """The networks with a db_backendnetwork row on this backend, and those of *network_ids*
        (the ones Ganeti has), with their subnets."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT n.id, n.deleted, n.action, n.public, n.mode, n.link, n.tags, "
                'coalesce(bn.mac_prefix, n.mac_prefix || to_hex(b."index")), '
                "bn.id, bn.operstate, bn.deleted, bn.backendjobid, bn.created, bn.updated "
                "FROM db_network n JOIN db_backend b ON b.id = %s "
                "LEFT JOIN db_backendnetwork bn ON bn.network_id = n.id AND bn.backend_id = b.id "
                "WHERE bn.id IS NOT NULL OR n.id = ANY(%s)",
                (self.backend_id, sorted(network_ids)),
            )
            rows = cur.fetchall()
            cur.execute(
                "SELECT network_id, ipversion, cidr, gateway, dhcp FROM db_subnet "
                "WHERE network_id = ANY(%s) AND NOT deleted ORDER BY id",
                ([r[0] for r in rows],),
            )
            subnets: dict[int, list[reconcile.Subnet]] = defaultdict(list)
            for network_id, *subnet in cur.fetchall():
                subnets[network_id].append(reconcile.Subnet(*subnet))
        return {
            r[0]: reconcile.NetworkRow(
                *r[:6],
                tags=tuple(t.strip() for t in (r[6] or "").split(",") if t.strip()),
                mac_prefix=r[7],
                subnets=tuple(subnets[r[0]]),
                backend=reconcile.BackendNetworkRow(*r[8:]) if r[8] is not None else None,
            )
            for r in rows
        }

    def pools(self, network_ids: Iterable[int]) -> list[reconcile.PoolRows]:
        """These networks' IPv4 pools and the addresses in use in each, as of one moment: Synnefo
        takes an address and writes its row in one transaction, so a consistent snapshot of both
        agrees unless something is wrong."""
        with self._transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute(
                'SELECT p.id, p.available_map, p.reserved_map, p.size, p.base, p."offset", '
                "s.id, s.network_id "
                "FROM db_ippooltable p JOIN db_subnet s ON s.id = p.subnet_id "
                "WHERE s.network_id = ANY(%s) AND s.ipversion = 4 AND NOT s.deleted ORDER BY p.id",
                (sorted(network_ids),),
            )
            pools = cur.fetchall()
            used = _addresses_in_use(cur, [p[6] for p in pools])
        return [reconcile.PoolRows(ippool.Pool(*p[:6]), p[7], tuple(used.get(p[6], ()))) for p in pools]

    def fix_pool(self, seen: ippool.Pool, reserved: Iterable[str]) -> str | None:
        """Rebuild a pool's maps from the addresses in use, if the pool is still as it was seen:
        None when done, else why not. The pool row is locked first, as every allocator does, so
        no address can be taken or given back meanwhile."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT available_map, reserved_map, subnet_id FROM db_ippooltable WHERE id = %s FOR UPDATE",
                (seen.id,),
            )
            row = cur.fetchone()
            if row is None:
                return f"IP pool {seen.id} is gone"
            if tuple(row[:2]) != (seen.available_map, seen.reserved_map):
                return f"IP pool {seen.id} changed since reconciliation saw it: judged again next pass"
            used = _addresses_in_use(cur, [row[2]]).get(row[2], [])
            new = ippool.repaired(seen, used, reserved)
            cur.execute(
                "UPDATE db_ippooltable SET available_map = %s, reserved_map = %s WHERE id = %s",
                (new.available_map, new.reserved_map, seen.id),
            )
        return None

    # -------------------------------------------------------- the batch

    def apply(self, batch_events: Iterable[Event]) -> BatchResult:
        """Apply a batch (VM and network events alike) in one transaction; DatabaseDown when it
        could not commit."""
        by_vm: dict[int, list[VmEvent]] = defaultdict(list)
        by_net: dict[int, list[NetworkEvent]] = defaultdict(list)
        for ev in batch_events:
            if isinstance(ev, NetworkEvent):
                by_net[ev.network_id].append(ev)
            else:
                by_vm[ev.vm_id].append(ev)
        with self._transaction() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            batch = _Batch(cur, self.backend_id, self.clock())
            batch.vms(by_vm)
            batch.networks(by_net)
            return batch.result


def _changes(row: dict[str, Any], columns: dict[str, Any]) -> dict[str, Any]:
    """The columns a plan changes, leaving alone those that name the row."""
    return {k: v for k, v in columns.items() if k not in READ_ONLY and row[k] != v}


def _dumps(value: Any) -> str:
    """JSON for row values; a timestamp goes as ISO 8601, which PostgreSQL parses exactly."""
    return json.dumps(value, default=datetime.isoformat)


def nic_rows(
    cur: Any, vm_ids: Iterable[int] | None, lock: str = "", backend_id: int | None = None
) -> dict[int, list[apply.NicRow]]:
    """These VMs' NIC rows with their IPv4 addresses (*lock*: " FOR UPDATE" inside a batch);
    vm_ids None: every VM of *backend_id* (a join is cheaper than a list of all their ids)."""
    if vm_ids is None:
        nic_where, nic_param = (
            "machine_id IN (SELECT id FROM db_virtualmachine WHERE backend_id = %s)",
            backend_id,
        )
    else:
        nic_where, nic_param = "machine_id = ANY(%s)", sorted(vm_ids)
        if not nic_param:
            return {}
    cur.execute(
        'SELECT id, machine_id, network_id, "index", mac, state, created FROM db_networkinterface '
        f"WHERE {nic_where} ORDER BY id{lock}",
        (nic_param,),
    )
    nics = cur.fetchall()
    ips: dict[int, list[apply.IpRow]] = defaultdict(list)
    if nics:
        ip_where, ip_param = "nic_id = ANY(%s)", [n[0] for n in nics]
        if vm_ids is None:
            ip_where, ip_param = (
                f"nic_id IN (SELECT id FROM db_networkinterface WHERE {nic_where})",
                nic_param,
            )
        cur.execute(
            "SELECT id, nic_id, address, floating_ip, network_id, subnet_id FROM db_ipaddress "
            f"WHERE {ip_where} AND ipversion = 4 AND NOT deleted ORDER BY id{lock}",
            (ip_param,),
        )
        for ip_id, nic_id, address, floating, network_id, subnet_id in cur.fetchall():
            ips[nic_id].append(apply.IpRow(ip_id, address, floating, network_id, subnet_id))
    out: dict[int, list[apply.NicRow]] = defaultdict(list)
    for nic_id, vm_id, network_id, index, mac, state, created in nics:
        out[vm_id].append(apply.NicRow(nic_id, network_id, index, mac, state, created, tuple(ips[nic_id])))
    return out


def _addresses_in_use(cur: Any, subnet_ids: list[int]) -> dict[int, list[str]]:
    """Subnet id -> the IPv4 addresses its live db_ipaddress rows hold (floating ones included)."""
    cur.execute(
        "SELECT subnet_id, address FROM db_ipaddress WHERE subnet_id = ANY(%s) AND ipversion = 4 "
        "AND NOT deleted AND address IS NOT NULL",
        (subnet_ids,),
    )
    out: dict[int, list[str]] = defaultdict(list)
    for subnet_id, address in cur.fetchall():
        out[subnet_id].append(address)
    return out


def _resizes(ev: VmEvent) -> bool:
    """Whether *ev* may change a VM's flavor: only then is db_flavor read."""
    return (isinstance(ev, OpStatus) and ev.resize is not None) or (
        isinstance(ev, Correction) and ev.kind == "flavor"
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _Batch:
    """One transaction's work; `cur` is inside it."""

    def __init__(self, cur: Any, backend_id: int, now: datetime) -> None:
        self.cur = cur
        self.backend_id = backend_id
        self.now = now
        self.result = BatchResult()
        self.flavors = apply.Flavors(())  # read only for a batch with a resize: most have none
        self.pools: dict[int, ippool.Pool] = {}  # locked IPv4 pools, as changed so far
        self.pool_subnet: dict[int, int] = {}  # pool id -> subnet id
        self.dirty_pools: set[int] = set()
        self.loaded_keys: dict[tuple[str, int], dict[str, Key]] = {}
        self.subnets: dict[int, list[tuple[int, str]]] = {}  # network id -> IPv4 (subnet id, cidr)
        self.public: dict[int, bool] = {}  # network id -> public

    # -------------------------------------------------------- VMs

    def vms(self, by_vm: dict[int, list[VmEvent]]) -> None:
        if not by_vm:
            return
        rows = self._lock("db_virtualmachine", VM_COLUMNS, "id = ANY(%s)", sorted(by_vm))
        keys = self._keys("vm", list(rows))
        if any(_resizes(ev) for events in by_vm.values() for ev in events):
            self.flavors = self._flavors()
        plans = {}
        for vm_id in sorted(by_vm):
            events = by_vm[vm_id]
            row = rows.get(vm_id)
            if row is None or row["backend_id"] != self.backend_id:
                why = "no such VM" if row is None else f"VM {vm_id} is on backend {row['backend_id']}"
                self.result.skipped += [(ev, why) for ev in events]
                continue
            plans[vm_id] = (row, apply.fold_vm(row, keys.get(vm_id, {}), events, self.flavors), events)
        nic_vms = [vm_id for vm_id, (_, plan, _) in plans.items() if plan.nics is not None]
        nics = self._nics(nic_vms)
        self._lock_pools(
            {n.network_id for rows_ in nics.values() for n in rows_} | self._plan_networks(plans)
        )
        if self._savepoint(lambda: self._write_vms(plans.values(), nics)):
            for _, plan, _ in plans.values():
                self._collect(plan)
            return
        for vm_id, (row, plan, events) in plans.items():  # someone's plan was refused: find whose
            if self._savepoint(lambda item=(row, plan, events): self._write_vms([item], nics)):
                self._collect(plan)
            else:
                self._one_by_one(vm_id, events)

    def _plan_networks(self, plans: dict[int, Any]) -> set[int]:
        return {
            nic.network_id
            for _, plan, _ in plans.values()
            if plan.nics is not None
            for nic in plan.nics.nics
            if nic.network_id is not None
        }

    def _one_by_one(self, vm_id: int, events: list[VmEvent]) -> None:
        """After a refused plan: each message in its own savepoint, against the row as it is now."""
        for ev in sorted(events, key=lambda e: e.key):
            error: list[str] = []

            def attempt(ev: VmEvent = ev) -> apply.Plan:
                row = self._lock("db_virtualmachine", VM_COLUMNS, "id = %s", vm_id)[vm_id]
                plan = apply.fold_vm(row, self._keys("vm", [vm_id]).get(vm_id, {}), [ev], self.flavors)
                nics = self._nics([vm_id] if plan.nics is not None else [])
                self._write_vms([(row, plan, [ev])], nics)
                return plan

            plan = self._savepoint(attempt, error)
            if plan:
                self._collect(plan)
            else:
                self.result.dead.append((ev, error[0]))

    def _collect(self, plan: apply.Plan) -> None:
        self.result.applied += plan.applied
        self.result.skipped += plan.skipped
        self.result.dead += plan.dead

    def _savepoint(self, work: Any, error: list[str] | None = None) -> Any:
        """Run *work* in a savepoint; on a message's error roll it back and return None."""
        pools, loaded = dict(self.pools), dict(self.loaded_keys)
        self.cur.execute("SAVEPOINT snf_watcher")
        try:
            out = work()
        except MESSAGE_ERRORS as e:
            self.cur.execute("ROLLBACK TO SAVEPOINT snf_watcher")
            self.pools, self.loaded_keys = pools, loaded
            self.dirty_pools.clear()
            if error is not None:
                error.append(_one_line(e))
            return None
        self.cur.execute("RELEASE SAVEPOINT snf_watcher")
        return out or True

    def _write_vms(
        self, plans: Iterable[tuple[dict[str, Any], apply.Plan, Any]], nics: dict[int, list[apply.NicRow]]
    ) -> bool:
        """Write these VMs' plans: NIC changes as they are worked out, the rest in one round trip.

        Rows that change the same columns share one UPDATE, and all order keys one
        upsert: a statement per row costs the server a parse and a plan each, which
        was most of a batch's time.
        """
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        keys: dict[int, dict[str, Key]] = {}
        diagnostics: dict[tuple[Any, ...], dict[str, Any]] = {}  # a redelivered one, once
        sql: list[bytes] = []
        for row, plan, _ in plans:
            vm_id = row["id"]
            changes = _changes(row, plan.columns)
            if changes:
                updates[tuple(changes)].append({"id": vm_id, **changes, "updated": self.now})
            if plan.keys != self.loaded_keys.get(("vm", vm_id), {}):
                keys[vm_id] = plan.keys
            if plan.volumes:
                sql.append(self._volumes(vm_id, plan.volumes))
            for d, when in plan.diagnostics:
                diagnostics.setdefault(
                    (vm_id, d.source, when, d.message),
                    {"machine_id": vm_id, "level": d.level, "source": d.source, "source_date": when,
                     "message": d.message, "details": d.details},
                )  # fmt: skip
            if plan.nics is not None:
                self._write_nics(row, plan.nics, nics.get(vm_id, []))
        sql += [self._update("db_virtualmachine", rows) for rows in updates.values()]
        if diagnostics:
            sql.append(self._diagnostics(list(diagnostics.values())))
        if keys:
            sql.append(self._upsert_keys("vm", keys))
        if sql:
            self.cur.execute(b";".join(sql))
        return True

    def _update(self, table: str, rows: list[dict[str, Any]]) -> bytes:
        """One UPDATE for rows that set the same columns; the table's own row type casts the values."""
        sets = ", ".join(f"{column} = d.{column}" for column in rows[0] if column != "id")
        return self.cur.mogrify(
            f"UPDATE {table} t SET {sets} FROM jsonb_populate_recordset(NULL::{table}, %s) d "
            "WHERE t.id = d.id",
            (Json(rows, dumps=_dumps),),
        )

    def _volumes(self, vm_id: int, state: str) -> bytes:
        if state == "DELETED":  # Synnefo: volumes go with the VM unless they are detachable
            return self.cur.mogrify(
                "UPDATE db_volume SET status = CASE WHEN delete_on_termination THEN 'DELETED' "
                "ELSE 'AVAILABLE' END, deleted = delete_on_termination, machine_id = NULL, updated = %s "
                "WHERE machine_id = %s AND NOT deleted",
                (self.now, vm_id),
            )
        return self.cur.mogrify(
            "UPDATE db_volume SET status = %s, updated = %s "
            "WHERE machine_id = %s AND status = 'CREATING' AND NOT deleted",
            (state, self.now, vm_id),
        )

    def _diagnostics(self, rows: list[dict[str, Any]]) -> bytes:
        """Insert diagnostics, each unless this very one is there (a redelivered message)."""
        return self.cur.mogrify(
            "INSERT INTO db_virtualmachinediagnostic "
            "(created, level, source, source_date, message, details, machine_id) "
            "SELECT %s, d.level, d.source, d.source_date, d.message, d.details, d.machine_id "
            "FROM jsonb_to_recordset(%s) AS d(level text, source text, source_date timestamptz, "
            "message text, details text, machine_id integer) "
            "WHERE NOT EXISTS (SELECT 1 FROM db_virtualmachinediagnostic x WHERE x.machine_id = d.machine_id "
            "AND x.source = d.source AND x.source_date = d.source_date AND x.message = d.message)",
            (self.now, Json(rows, dumps=_dumps)),
        )

    # -------------------------------------------------------- NICs and addresses

    def _nics(self, vm_ids: list[int]) -> dict[int, list[apply.NicRow]]:
        return nic_rows(self.cur, vm_ids, " FOR UPDATE")

    def _lock_pools(self, network_ids: set[int]) -> None:
        """Lock the IPv4 pools of these networks in id order, and learn their subnets."""
        todo = sorted(network_ids - self.public.keys())
        if not todo:
            return
        self.cur.execute("SELECT id, public FROM db_network WHERE id = ANY(%s)", (todo,))
        self.public.update(self.cur.fetchall())
        self.cur.execute(
            "SELECT id, network_id, cidr FROM db_subnet WHERE network_id = ANY(%s) AND ipversion = 4 "
            "AND NOT deleted ORDER BY id",
            (todo,),
        )
        subnet_ids = []
        for subnet_id, network_id, cidr in self.cur.fetchall():
            self.subnets.setdefault(network_id, []).append((subnet_id, cidr))
            subnet_ids.append(subnet_id)
        self.cur.execute(
            'SELECT id, available_map, reserved_map, size, base, "offset", subnet_id FROM db_ippooltable '
            "WHERE subnet_id = ANY(%s) ORDER BY id FOR UPDATE",
            (subnet_ids,),
        )
        for *row, subnet_id in self.cur.fetchall():
            self.pools[row[0]] = ippool.Pool(*row)
            self.pool_subnet[row[0]] = subnet_id

    def _write_nics(self, vm: dict[str, Any], plan: apply.NicsPlan, rows: list[apply.NicRow]) -> None:
        if plan.kind == "match":  # a network Synnefo does not have is one we cannot attach a row to
            nics = tuple(n if n.network_id in self.public else replace(n, network_id=None) for n in plan.nics)
            plan = apply.NicsPlan(plan.kind, plan.time, nics)
        changes = apply.nic_changes(plan, rows)
        for text in changes.unknown:
            log.warning("VM %d: Ganeti NIC not synced: %s", vm["id"], text)
        cur = self.cur
        for row in changes.remove:
            for ip in row.ipv4:
                self._release(vm, row, ip, f"remove ip from port {row.id}")
            cur.execute(
                "DELETE FROM db_networkinterface_security_groups WHERE networkinterface_id = %s", (row.id,)
            )
            cur.execute("DELETE FROM db_networkinterface WHERE id = %s", (row.id,))
        for nic_id, columns in changes.update.items():
            sets = ", ".join(f'"{k}" = %s' for k in columns)
            cur.execute(
                f"UPDATE db_networkinterface SET {sets}, updated = %s WHERE id = %s",
                [*columns.values(), self.now, nic_id],
            )
        for row, address, network_id in changes.readdress:
            for ip in row.ipv4:
                self._release(vm, row, ip, f"change address of port {row.id}")
            if address:
                self._allocate(vm, row.id, address, network_id)
        self._save_pools()

    def _release(self, vm: dict[str, Any], nic: apply.NicRow, ip: apply.IpRow, reason: str) -> None:
        """Synnefo's remove_nic_ips: a floating IP stays reserved, any other goes back to its pool."""
        if ip.floating:
            self.cur.execute(
                "UPDATE db_ipaddress SET nic_id = NULL, updated = %s WHERE id = %s", (self.now, ip.id)
            )
        else:
            self.cur.execute("DELETE FROM db_ipaddress WHERE id = %s", (ip.id,))
            self._pool_change(ip.network_id, ip.address, ippool.release)
        self._history(vm, ip.network_id, ip.address, "disassociate", reason)

    def _allocate(self, vm: dict[str, Any], nic_id: int, address: str, network_id: int) -> None:
        subnet = self._subnet_of(network_id, address)
        self._pool_change(network_id, address, ippool.reserve)
        self.cur.execute(
            "INSERT INTO db_ipaddress (userid, project, shared_to_project, address, floating_ip, ipversion, "
            "created, updated, deleted, network_id, nic_id, serial_id, subnet_id) "
            "VALUES (%s, %s, false, %s, false, 4, %s, %s, false, %s, %s, NULL, %s)",
            (vm["userid"], vm["project"], address, self.now, self.now, network_id, nic_id, subnet),
        )
        self._history(vm, network_id, address, "associate", f"change address of port {nic_id}")

    def _subnet_of(self, network_id: int, address: str) -> int:
        for subnet_id, cidr in self.subnets.get(network_id, []):
            try:
                if ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False):
                    return subnet_id
            except ValueError:
                continue
        raise BadMessage(f"address {address} is in no IPv4 subnet of network {network_id}")

    def _pool_change(self, network_id: int, address: str, change: Any) -> None:
        subnets = {s for s, _ in self.subnets.get(network_id, [])}
        pool = ippool.pool_for([p for p in self.pools.values() if self.pool_subnet[p.id] in subnets], address)
        if pool is not None:
            self.pools[pool.id] = change(pool, address)
            self.dirty_pools.add(pool.id)

    def _history(self, vm: dict[str, Any], network_id: int, address: str, action: str, reason: str) -> None:
        """Synnefo logs the (dis)association of public IPv4 addresses only."""
        if not self.public.get(network_id):
            return
        self.cur.execute(
            "INSERT INTO db_ipaddresshistory (address, server_id, network_id, user_id, action, "
            "action_date, action_reason) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (address, vm["id"], network_id, vm["userid"], action, self.now, reason),
        )

    def _save_pools(self) -> None:
        for pool_id in sorted(self.dirty_pools):
            self.cur.execute(
                "UPDATE db_ippooltable SET available_map = %s WHERE id = %s",
                (self.pools[pool_id].available_map, pool_id),
            )
        self.dirty_pools.clear()

    # -------------------------------------------------------- networks

    def networks(self, by_net: dict[int, list[NetworkEvent]]) -> None:
        if not by_net:
            return
        self._create_missing_backend_networks(sorted(by_net))
        rows = {
            r["network_id"]: r
            for r in self._lock(
                "db_backendnetwork",
                NETWORK_COLUMNS,
                "backend_id = %s AND network_id = ANY(%s)",
                self.backend_id,
                sorted(by_net),
            ).values()
        }
        keys = self._keys("network", [r["id"] for r in rows.values()])
        for network_id in sorted(by_net):
            events = by_net[network_id]
            row = rows.get(network_id)
            if row is None:
                self.result.skipped += [(ev, f"no network {network_id} in db_network") for ev in events]
                continue
            plan = apply.fold_network(row, keys.get(row["id"], {}), events)

            def write(row: dict[str, Any] = row, plan: apply.Plan = plan) -> apply.Plan:
                if changes := _changes(row, plan.columns):
                    self.cur.execute(
                        self._update("db_backendnetwork", [{"id": row["id"], **changes, "updated": self.now}])
                    )
                self.cur.execute(self._upsert_keys("network", {row["id"]: plan.keys}))
                return plan

            error: list[str] = []
            if self._savepoint(write, error):
                self._collect(plan)
            else:
                self.result.dead += [(ev, error[0]) for ev in events]

    def _create_missing_backend_networks(self, network_ids: list[int]) -> None:
        """Synnefo creates a network's per-backend row on its first message (get_or_create)."""
        self.cur.execute(
            "INSERT INTO db_backendnetwork (created, updated, deleted, mac_prefix, operstate, backendtime, "
            "backend_id, network_id) "
            "SELECT %s, %s, false, n.mac_prefix || to_hex(b.\"index\"), 'PENDING', '0001-01-01 00:00:00+00', "
            "b.id, n.id FROM db_network n, db_backend b WHERE b.id = %s AND n.id = ANY(%s) AND NOT n.deleted "
            "ORDER BY n.id ON CONFLICT (network_id, backend_id) DO NOTHING",
            (self.now, self.now, self.backend_id, network_ids),
        )

    # -------------------------------------------------------- shared

    def _lock(
        self, table: str, columns: tuple[str, ...], where: str, *params: Any
    ) -> dict[int, dict[str, Any]]:
        cols = ", ".join(columns)
        self.cur.execute(f"SELECT {cols} FROM {table} WHERE {where} ORDER BY id FOR UPDATE", params)
        return {row[0]: dict(zip(columns, row, strict=True)) for row in self.cur.fetchall()}

    def _keys(self, kind: str, ids: list[int]) -> dict[int, dict[str, Key]]:
        if not ids:
            return {}
        self.cur.execute(
            "SELECT object_id, keys FROM snf_watcher_order WHERE object = %s AND object_id = ANY(%s)",
            (kind, ids),
        )
        out = {oid: {k: tuple(v) for k, v in keys.items()} for oid, keys in self.cur.fetchall()}
        for oid in ids:
            self.loaded_keys[(kind, oid)] = out.get(oid, {})
        return out

    def _upsert_keys(self, kind: str, keys: dict[int, dict[str, Key]]) -> bytes:
        """Save these objects' order keys, in one statement whatever their number."""
        self.loaded_keys.update({(kind, object_id): k for object_id, k in keys.items()})
        rows = [{"id": object_id, "keys": k} for object_id, k in sorted(keys.items())]
        return self.cur.mogrify(
            "INSERT INTO snf_watcher_order (object, object_id, keys) "
            "SELECT %s, k.id, k.keys FROM jsonb_to_recordset(%s) AS k(id integer, keys jsonb) "
            "ON CONFLICT (object, object_id) DO UPDATE SET keys = excluded.keys",
            (kind, Json(rows)),
        )

    def _flavors(self) -> apply.Flavors:
        self.cur.execute("SELECT id, cpu, ram, disk, volume_type_id FROM db_flavor")
        return apply.Flavors(apply.Flavor(*row) for row in self.cur.fetchall())
