"""A real, throwaway PostgreSQL 15 server loaded with Synnefo's schema and seed data.

snf-watcher writes to Synnefo's Cyclades database, so its tests need the real
thing: PostgreSQL's locking, deferred constraints and transaction semantics
are what we must get right, and no fake reproduces them.

One server per test session (fixture `pg_server`, tests/conftest.py) holds a
template database with tests/synnefo/schema.sql and seed.sql loaded once; each
test gets its own copy of it (fixture `synnefo_db`), which takes tens of
milliseconds instead of reloading the SQL. The benchmarks (bench/) and the demo
(demo/) use the same classes; the demo keeps its server running after it exits.

The server listens on a Unix socket only, in a private temp directory, so
parallel sessions (or a system PostgreSQL) never collide. initdb refuses to run
as root, so under root the server runs as user `postgres` (made by Debian's
postgresql-15 package) or, failing that, `nobody`.
"""

from __future__ import annotations

import functools
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

BINDIR = Path("/usr/lib/postgresql/15/bin")
SYNNEFO_SQL = Path(__file__).resolve().parent / "synnefo"
SCHEMA_SQL = SYNNEFO_SQL / "schema.sql"
SEED_SQL = SYNNEFO_SQL / "seed.sql"
TEMPLATE = "synnefo_template"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections (or to stop)
STOP_MODES = ("fast", "immediate")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with the trailing NUL

_names = itertools.count(1)


class PgServerError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up, started or stopped."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _free_port() -> int:
    """A port no local TCP listener uses. The socket is private anyway; this keeps the name unique."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configured_port(datadir: Path) -> int:
    """The port an existing server of ours listens on: the last `port = N` of its postgresql.conf."""
    ports = re.findall(r"^port = (\d+)$", (datadir / "postgresql.conf").read_text(), re.M)
    if not ports:
        raise PgServerError(f"{datadir}/postgresql.conf sets no port: not a server made by {__name__}")
    return int(ports[-1])


def _dsn_quote(value: str) -> str:
    """Quote a libpq conninfo value if it needs it (a TMPDIR with a space, say)."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _clean_env() -> dict[str, str]:
    """The environment minus libpq's PG* variables, which would redirect our tools elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # initdb and the server: messages and locale checks must not depend on the caller
    return env


def _server_user(user: str | None) -> pwd.struct_passwd | None:
    """The account to run the server as: None means "this process", which is fine unless we are root."""
    if os.geteuid() != 0:
        if user is not None and user != pwd.getpwuid(os.geteuid()).pw_name:
            raise PgServerError(f"cannot run the server as {user!r}: switching users needs root")
        return None
    candidates = [user] if user is not None else ["postgres", "nobody"]
    for name in candidates:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgServerError(
        f"running as root, and none of the users {candidates} exists to run PostgreSQL as "
        "(initdb refuses root); install the postgresql-15 Debian package, which creates `postgres`"
    )


def _check_binaries(bindir: Path, names: Sequence[str]) -> None:
    for name in names:
        path = bindir / name
        if not os.access(path, os.X_OK):
            raise PgServerError(
                f"{path} is missing (or not executable): the PostgreSQL 15 server binaries are not "
                "installed; the Debian package postgresql-15 provides them (apt-get install postgresql-15)"
            )


class PgServer:
    """One PostgreSQL server: its own data dir, socket dir and log, all in one directory.

    Construction runs initdb; start() starts the server; destroy() stops it and removes
    everything. By default the directory is a new temp dir and a finalizer destroys the
    server at interpreter exit, so an interrupted session does not leave one behind. With
    *base* and *keep* (the demo) the server outlives this process, and constructing it again
    on the same *base* takes up the existing server instead of running initdb.
    """

    def __init__(
        self,
        *,
        fsync: bool = True,
        bindir: str | os.PathLike[str] = BINDIR,
        user: str | None = None,
        shared_buffers: str = "16MB",
        max_connections: int = 50,
        base: str | os.PathLike[str] | None = None,
        keep: bool = False,
    ) -> None:
        self.bindir = Path(bindir)
        _check_binaries(self.bindir, ("initdb", "pg_ctl", "postgres", "psql"))
        self._user = _server_user(user)
        self._runuser: list[str] = []
        if self._user is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            if not os.access(runuser, os.X_OK):
                raise PgServerError(f"{runuser} is missing: running as root needs it (package util-linux)")
            self._runuser = [runuser, "-u", self._user.pw_name, "--"]
        self.fsync = fsync
        self.template: str | None = None  # set by create_template()
        if base is None:
            # Not under pytest's tmp_path: its 0700 parents would keep the server user out.
            self.base = Path(tempfile.mkdtemp(prefix="snf-pg-"))
        else:
            self.base = Path(base)
            self.base.mkdir(parents=True, exist_ok=True)
        self.datadir = self.base / "data"
        self.socketdir = self.base / "socket"
        self.logfile = self.base / "server.log"
        existing = (self.datadir / "PG_VERSION").exists()
        self.port = _configured_port(self.datadir) if existing else _free_port()
        self._pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir)]
        cleanup = functools.partial(_cleanup, self.base, self._runuser + self._pg_ctl, _clean_env())
        # A finalizer runs at most once, at destroy() or at exit; a kept server has none.
        self._destroy: Callable[[], Any] = cleanup if keep else weakref.finalize(self, cleanup)
        if existing:
            return
        self.base.chmod(0o755)
        if len(str(self.socketdir / f".s.PGSQL.{self.port}")) > _SOCKET_PATH_MAX:
            self.destroy()
            raise PgServerError(
                f"the socket path under {self.base} is too long for a Unix socket; set TMPDIR to a short path"
            )
        try:
            self._init(shared_buffers, max_connections)
        except BaseException:
            self.destroy()
            raise

    # --- setup -------------------------------------------------------------------------------

    def _run(self, argv: list[str], what: str, *, as_server: bool = True) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool (as the server user if we are root); raise with its output if it fails."""
        full = (self._runuser if as_server else []) + argv
        proc = subprocess.run(
            full, cwd=self.base, env=_clean_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            raise PgServerError(
                f"{what} failed (exit {proc.returncode}): {' '.join(full)}\n"
                f"{_tail(proc.stdout + proc.stderr)}"
            )
        return proc

    def _init(self, shared_buffers: str, max_connections: int) -> None:
        self.datadir.mkdir(mode=0o700)  # initdb insists on 0700 (or 0750)
        self.socketdir.mkdir()
        self.socketdir.chmod(0o755)  # clients running as any user may connect, as with /run/postgresql
        self.logfile.touch(mode=0o600)
        if self._user is not None:
            for p in (self.base, self.datadir, self.socketdir, self.logfile):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
            # Every parent of the temp dir must let the server user through (TMPDIR might not).
            probe = subprocess.run(
                [*self._runuser, "test", "-w", str(self.socketdir)],
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
            )
            if probe.returncode != 0:
                raise PgServerError(
                    f"user {self._user.pw_name} cannot reach {self.socketdir}: a parent directory is closed "
                    "to it; set TMPDIR to a directory everyone may traverse, such as /tmp"
                )
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # a throwaway cluster: nothing to make durable before the server runs
                "--no-instructions",
            ],
            "initdb",
        )
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": "'{}'".format(str(self.socketdir).replace("'", "''")),
            "port": str(self.port),
            "fsync": "on" if self.fsync else "off",
            "shared_buffers": shared_buffers,
            "max_connections": str(max_connections),
            "timezone": "'UTC'",  # timestamps in failure messages read the same on every machine
            "logging_collector": "off",  # pg_ctl -l captures stderr into server.log
        }
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # As root, the file belongs to the server user; appending as root keeps its owner.
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# snf-watcher tests (tests/pgserver.py)\n" + conf)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the postmaster is up (pg_ctl status), not whether start() was called."""
        if not self.datadir.is_dir():
            return False
        proc = subprocess.run(
            [*self._runuser, *self._pg_ctl, "status"],
            env=_clean_env(),
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        return proc.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections; a no-op if it is already running."""
        if self.running:
            return
        try:
            self._run(
                [*self._pg_ctl, "start", "-w", "-t", str(START_TIMEOUT)] + ["-l", str(self.logfile)],
                "starting PostgreSQL",
            )
        except PgServerError as e:
            raise PgServerError(f"{e}\n--- tail of {self.logfile} ---\n{_tail(self.log_text())}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" aborts open transactions cleanly, "immediate" is a crash (WAL replay)."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {STOP_MODES}, not {mode!r}")
        if not self.running:
            return
        try:
            self._run(
                [*self._pg_ctl, "stop", "-w", "-t", str(START_TIMEOUT), "-m", mode],
                "stopping PostgreSQL",
            )
        except PgServerError as e:
            raise PgServerError(f"{e}\n--- tail of {self.logfile} ---\n{_tail(self.log_text())}") from None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory; safe to call twice."""
        self._destroy()

    def log_text(self) -> str:
        """The server's log so far, for failure messages."""
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- clients -----------------------------------------------------------------------------

    def dsn(self, dbname: str) -> str:
        """A libpq key=value connection string for a database on this server."""
        values = {"host": str(self.socketdir), "port": str(self.port), "user": SUPERUSER, "dbname": dbname}
        return " ".join(f"{k}={_dsn_quote(v)}" for k, v in values.items())

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        """An autocommit connection (the caller closes it)."""
        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = True
        return conn

    def _admin(self, statement: sql.Composable) -> None:
        conn = self.connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create a database with Synnefo's schema and seed data.

        psql loads the files as they are documented to be loaded (ON_ERROR_STOP, each file
        its own transaction), and names file and line if one fails.
        """
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        argv = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(name)]
        argv += ["-f", str(SCHEMA_SQL), "-f", str(SEED_SQL)]
        self._run(argv, f"loading {SCHEMA_SQL.name} and {SEED_SQL.name} into {name}", as_server=False)
        return name

    def create_template(self, name: str = TEMPLATE) -> str:
        """create_database(), marked as a template for new_database()."""
        self.create_database(name)
        self._admin(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(name)))
        self.template = name
        return name

    def new_database(self, name: str | None = None, template: str | None = None) -> str:
        """Create a database as a copy of the template (create_template() first); returns its name."""
        template = template or self.template
        if template is None:
            raise PgServerError("new_database() needs a template: call create_template() first")
        if name is None:
            name = f"synnefo_test_{next(_names)}_{uuid.uuid4().hex[:8]}"
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still in it (a test may leak a connection)."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _cleanup(base: Path, pg_ctl: list[str], env: dict[str, str]) -> None:
    """Stop the server in `base` (if any) and remove `base`: destroy() and the exit-time finalizer."""
    datadir = base / "data"
    if (datadir / "postmaster.pid").exists():
        for mode in STOP_MODES:
            proc = subprocess.run(
                [*pg_ctl, "stop", "-w", "-t", "30", "-m", mode],
                env=env,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
            if proc.returncode == 0 or not (datadir / "postmaster.pid").exists():
                break
        else:
            _kill_postmaster(datadir)
    shutil.rmtree(base, ignore_errors=True)


def _kill_postmaster(datadir: Path) -> None:
    """Last resort when pg_ctl cannot stop our own postmaster: SIGKILL it (its children then exit)."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)


@dataclass
class SynnefoDb:
    """A test's own copy of the Synnefo database, with a lazily opened autocommit connection."""

    name: str
    dsn: str
    server: PgServer
    _conn: psycopg2.extensions.connection | None = field(default=None, repr=False)

    @property
    def conn(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.server.connect(self.name)
        return self._conn

    def query(self, statement: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        """Run one statement (autocommit); its rows, or [] for statements that return none."""
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

    def one(self, statement: str, params: Sequence[Any] | dict[str, Any] | None = None) -> tuple:
        """The single row a query returns; fails the test if it returns none or several."""
        rows = self.query(statement, params)
        if len(rows) != 1:
            raise AssertionError(f"expected exactly one row, got {len(rows)}: {rows[:5]!r}\n{statement}")
        return rows[0]

    def add_flavor(self, flavor_id: int, cpu: int, ram: int, disk: int) -> None:
        """A public flavor of volume type 1 (the seed's): *cpu* vCPUs, *ram* MiB, *disk* GiB."""
        self.query(
            "INSERT INTO db_flavor (id, cpu, ram, disk, deleted, allow_create, volume_type_id, public) "
            "VALUES (%s, %s, %s, %s, false, true, 1, true)",
            (flavor_id, cpu, ram, disk),
        )

    def add_backend_network(self, network_id: int, mac_prefix: str, backend_id: int = 1) -> None:
        """The network is ACTIVE on the backend, as if Synnefo had just created it there."""
        self.query(
            "INSERT INTO db_backendnetwork (created, updated, deleted, mac_prefix, operstate, backendtime, "
            "backend_id, network_id) VALUES (now(), now(), false, %s, 'ACTIVE', now(), %s, %s)",
            (mac_prefix, backend_id, network_id),
        )

    def add_vms(self, ids: range) -> None:
        """Extra STOPPED VMs on backend 1, copies of seed VM 102 without NICs (for big streams)."""
        self.query(
            "INSERT INTO db_virtualmachine (id, name, userid, project, shared_to_project, backend_hash, "
            "created, updated, imageid, image_version, hostid, deleted, suspended, helper, action, "
            "operstate, backendjobid, backendopcode, backendjobstatus, backendlogmsg, buildpercentage, "
            "backendtime, task, task_job_id, backend_id, flavor_id, serial_id, key_names, rescue, "
            "rescue_image_id, rescue_properties_id) "
            "SELECT i, 'vm-' || i, userid, project, shared_to_project, backend_hash, created, updated, "
            "imageid, image_version, hostid, deleted, suspended, helper, action, operstate, "
            "backendjobid, backendopcode, backendjobstatus, backendlogmsg, buildpercentage, backendtime, "
            "task, task_job_id, backend_id, flavor_id, NULL, key_names, rescue, rescue_image_id, NULL "
            "FROM db_virtualmachine, generate_series(%s, %s) AS i WHERE id = 102",
            (ids.start, ids.stop - 1),
        )
        self.query("ANALYZE db_virtualmachine")  # the planner then knows the table is big

    def seed_elsewhere(self) -> None:
        """The seed's VMs and networks live on another cluster (a second backend), not this one."""
        self.query(
            'INSERT INTO db_backend (id, clustername, port, hash, "index", drained, offline, hypervisor, '
            "updated, mfree, mtotal, dfree, dtotal, pinst_cnt, ctotal, public) VALUES "
            "(2, 'other.example', 5080, 'x', 1, false, false, 'kvm', now(), 0, 0, 0, 0, 0, 0, true)"
        )
        self.query("UPDATE db_virtualmachine SET backend_id = 2")
        self.query(
            "UPDATE db_backendnetwork SET backend_id = 2, mac_prefix = substr(mac_prefix, 1, 7) || '1'"
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
