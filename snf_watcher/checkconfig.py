"""`snf-watcher check-config`: can this node's config do its job?

After installing the package and editing the config, an operator wants one
command that tries everything the daemons and the cron pass will need (Ganeti's
files, our directories, the secrets, Synnefo's database, RAPI) and says exactly
what is wrong, before the first pass or event finds out at 3 a.m. Each check
gives one line; the exit code is the worst level, as for the pass.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass

from snf_watcher import ssconf
from snf_watcher.config import Config
from snf_watcher.rapi import Rapi, RapiError
from snf_watcher.report import CRITICAL, LEVELS, OK, WARNING
from snf_watcher.syncdb import Database, DatabaseDown, safe_dsn


@dataclass(frozen=True)
class Check:
    level: int
    area: str  # ganeti, files, secrets, database, rapi
    text: str

    def line(self) -> str:
        return f"{LEVELS[self.level]:8} {self.area}: {self.text}"


def run(cfg: Config) -> list[Check]:
    return [*ganeti(cfg), *files(cfg), *secrets(cfg), *database(cfg), *rapi(cfg)]


def worst(checks: list[Check]) -> int:
    return max((c.level for c in checks), default=OK)


# ------------------------------------------------------------ Ganeti's files


def ganeti(cfg: Config) -> list[Check]:
    g = cfg.ganeti
    master = ssconf.read(g.ssconf_dir, "master_node")
    if master is None:
        text = f"no ssconf_master_node in {g.ssconf_dir}: is this node in a Ganeti cluster?"
        checks = [Check(CRITICAL, "ganeti", text)]
    elif ssconf.is_master(master, g.node_name):
        cluster = ssconf.read(g.ssconf_dir, "cluster_name") or "a cluster without ssconf_cluster_name"
        checks = [Check(OK, "ganeti", f"this node is the master of {cluster}")]
    else:
        me = g.node_name or f"{os.uname().nodename} (set ganeti.node_name if Ganeti knows it otherwise)"
        text = f"this node, {me}, is not the master ({master} is): eventd and the watcher wait until it is"
        checks = [Check(OK, "ganeti", text)]
    if not os.path.isdir(g.queue_dir) or not os.access(g.queue_dir, os.R_OK | os.X_OK):
        checks.append(
            Check(CRITICAL, "ganeti", f"ganeti.queue_dir {g.queue_dir} is not a readable directory")
        )
    return checks


# ------------------------------------------------------------ our directories


def files(cfg: Config) -> list[Check]:
    """Where each program writes: it must be able to, and nobody else should."""
    w = cfg.watcher
    places = {
        "outbox.path": os.path.dirname(cfg.outbox.path),
        "outbox.spool_dir": cfg.outbox.spool_dir,
        "watcher.state_file": os.path.dirname(w.state_file),
        "watcher.pause_file": os.path.dirname(w.pause_file),
    }
    checks = []
    for key, directory in places.items():
        problem = directory_problem(directory)
        if problem:
            checks.append(Check(CRITICAL, "files", f"{key}: {problem}"))
    if not checks:
        where = ", ".join(sorted(set(places.values())))
        checks.append(Check(OK, "files", f"{where}: writable by this user, and by nobody else"))
    if w.metrics_file and not os.path.isdir(os.path.dirname(w.metrics_file)):
        text = (
            f"watcher.metrics_file: {os.path.dirname(w.metrics_file)} does not exist: no metrics "
            "(install prometheus-node-exporter, or set watcher.metrics_file: null)"
        )
        checks.append(Check(WARNING, "files", text))
    return checks


def directory_problem(directory: str) -> str | None:
    """None when *directory* is, or can be made, private to us; else what is wrong."""
    directory = os.path.abspath(directory)  # relative paths are the working directory's
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    try:
        st = os.stat(existing)
    except OSError as e:
        return f"{existing}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user (uid {os.geteuid()}); run as root"
    if existing == directory:
        return mode_problem(directory, st, 0o022, "writable")
    return None


def mode_problem(path: str, st: os.stat_result, forbidden: int, what: str) -> str | None:
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & forbidden:
        mode, bits = stat.S_IMODE(st.st_mode), "w" if forbidden == 0o022 else "rwx"
        return f"{path} is {what} by others (mode {mode:04o}): chmod go-{bits} {path}"
    return None


# ------------------------------------------------------------ secrets


def secrets(cfg: Config) -> list[Check]:
    checks = []
    for key, path in (
        ("database.password_file", cfg.database.password_file),
        ("rapi.password_file", cfg.rapi.password_file),
    ):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            checks.append(Check(CRITICAL, "secrets", f"{key} {path}: {e.strerror}"))
            continue
        problem = mode_problem(path, st, 0o077, "readable")
        if problem:
            checks.append(Check(WARNING, "secrets", f"{key}: {problem}"))
        else:
            checks.append(Check(OK, "secrets", f"{key} {path} is readable by this user only"))
    return checks


# ------------------------------------------------------------ Synnefo's database


def database(cfg: Config) -> list[Check]:
    d = cfg.database
    if d.dsn is None:
        text = "database.dsn is not set: events wait in the outbox and the watcher cannot run (UNKNOWN)"
        return [Check(WARNING, "database", text)]
    where = safe_dsn(d.dsn)
    db = Database(d)
    try:
        cluster, offline, missing = db.access()  # connects first, as every Database call does
    except DatabaseDown as e:
        return [Check(CRITICAL, "database", f"{where}: {e}")]
    finally:
        db.close()
    checks = [Check(OK, "database", f"{where}: connected; database.backend_id {d.backend_id} is {cluster}")]
    own = ssconf.read(cfg.ganeti.ssconf_dir, "cluster_name")
    if own is not None and own != cluster:
        text = f"database.backend_id {d.backend_id} is cluster {cluster}, but this node's cluster is {own}"
        checks.append(Check(CRITICAL, "database", text))
    if offline:
        text = f"backend {d.backend_id} is marked offline in db_backend: the watcher does not reconcile it"
        checks.append(Check(WARNING, "database", text))
    if missing:
        checks.append(Check(CRITICAL, "database", f"the database user lacks {', '.join(missing)}"))
    return checks


# ------------------------------------------------------------ Ganeti's RAPI


def rapi(cfg: Config) -> list[Check]:
    r = cfg.rapi
    client = Rapi(dataclasses.replace(r, retries=0))  # say what is wrong now, not after backing off
    try:
        version = client.version()
        jobs = client.jobs()  # needs the credentials wherever RAPI requires authentication
    except RapiError as e:
        return [Check(CRITICAL, "rapi", str(e))]
    finally:
        client.close()
    who = f"as {r.user}" if r.user else "without credentials"
    checks = [Check(OK, "rapi", f"{r.url} answers {who} (RAPI version {version}, {len(jobs)} live jobs)")]
    if r.user is None:
        text = "no rapi.user: the watcher cannot submit restarts or fixes (set it and rapi.password_file)"
        return [*checks, Check(WARNING, "rapi", text)]
    users = os.path.join(cfg.ganeti.ssconf_dir, "rapi", "users")  # Ganeti's data dir holds both
    try:
        with open(users) as f:
            access = write_access(f.read(), r.user)
    except OSError as e:
        return [*checks, Check(WARNING, "rapi", f"cannot read {users} to check write access: {e.strerror}")]
    if access is None:
        return [*checks, Check(OK, "rapi", f"user {r.user} has write access ({users})")]
    return [*checks, Check(CRITICAL, "rapi", f"user {r.user} {access} in {users}")]


def write_access(users: str, user: str) -> str | None:
    """None if *user* may write according to Ganeti's RAPI users file, else why not.

    Read as Ganeti reads it: `user password [options]` per line, options split on
    commas (`write`, `read, write`), `#` lines are comments, a line without a
    password is ignored, and a later line for a user replaces an earlier one.
    """
    options: list[str] | None = None
    for line in users.splitlines():
        fields = line.strip().split(None, 2)
        if len(fields) < 2 or fields[0].startswith("#") or fields[0] != user:
            continue
        options = [o.strip() for o in fields[2].split(",")] if len(fields) > 2 else []
    if options is None:
        return "is not listed"
    return None if "write" in options else "has no write access (add `write` to its line)"
