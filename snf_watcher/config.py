"""Load and validate the one YAML config file.

The schema is the dataclasses below: every field with a default is optional in
the file, every field without one is required. Loading is all-or-nothing: the
first problem found ends the program (exit code 3) before anything else runs,
with a message naming the file, the dotted key and what is wrong, because a
daemon that starts on a half-understood config does damage quietly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from snf_watcher import DEFAULT_CONFIG as DEFAULT_PATH

# The kinds of drift reconciliation finds (reconcile.KINDS; here so loading a config stays light).
RECONCILE_KINDS = (
    "stale",
    "orphan",
    "operstate",
    "flavor",
    "nics",
    "build",
    "task",
    "network-stale",
    "network-missing",
    "network-orphan",
    "network-groups",
    "network-unsynced",
    "pool",
)
EXIT_CONFIG = 3  # Nagios UNKNOWN: we could not even tell what to check


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the text says where and why."""


@dataclass(frozen=True)
class GanetiConfig:
    """Where this node's Ganeti keeps its state."""

    queue_dir: str = "/var/lib/ganeti/queue"
    ssconf_dir: str = "/var/lib/ganeti"
    # The node's name as Ganeti knows it (compared with ssconf_master_node);
    # null means this host's fully qualified domain name.
    node_name: str | None = None


@dataclass(frozen=True)
class OutboxConfig:
    """Where events wait until the database has them."""

    path: str = "/var/lib/snf-watcher/outbox.sqlite"
    # Hooks and the progress monitor drop one file per message here; the
    # daemon (or `snf-watcher outbox`) moves them into the outbox database.
    spool_dir: str = "/var/lib/snf-watcher/spool"


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: stderr on a terminal or under systemd, syslog otherwise;
    # file: <dir>/<program>.log, reopened when logrotate moves it.
    target: Literal["auto", "stderr", "syslog", "file"] = "auto"
    dir: str = "/var/log/snf-watcher"


@dataclass(frozen=True)
class EventdConfig:
    # Seconds between checks of ssconf_master_node when no job file changes.
    master_check_interval: float = 1.0
    # Job files read per outbox transaction while catching up.
    batch_size: int = 500
    # A job id that never appeared is skipped by the high-water mark once a
    # later job is this many seconds old (ids can be burnt by failed submits).
    gap_grace: float = 300.0


@dataclass(frozen=True)
class DatabaseConfig:
    """Synnefo's (Cyclades') PostgreSQL database, where events are delivered."""

    # A libpq connection string or URI, without the password, e.g.
    # "host=db.example.org dbname=snf_apps user=cyclades". null: no delivery
    # (events wait in the outbox).
    dsn: str | None = None
    # A file whose first line is the password. null: libpq finds it itself
    # ($PGPASSFILE, ~/.pgpass, a service file named in the dsn).
    password_file: str | None = None
    # The db_backend id of this Ganeti cluster; required with a dsn. Rows of
    # VMs on other backends are never touched.
    backend_id: int | None = None
    # Seconds to wait for a connection before counting the database as down.
    connect_timeout: int = 10
    # Outbox messages applied per database transaction.
    batch_size: int = 500
    # Longest wait, in seconds, between reconnection attempts while the
    # database is down (the wait doubles from 1 s up to this).
    max_retry_interval: float = 30.0


@dataclass(frozen=True)
class RapiConfig:
    """Ganeti's remote API on the master, which the watcher reads and submits jobs to."""

    url: str = "https://127.0.0.1:5080"
    # The certificate RAPI's TLS is verified against: Ganeti's own self-signed
    # cluster certificate. Verification is never turned off.
    ca_file: str = "/var/lib/ganeti/rapi.pem"
    # Also require the certificate to name rapi.url's host (subjectAltName).
    # Off by default: the certificate Ganeti generates names ganeti.example.com,
    # and only the holder of the ca_file certificate's key passes the check
    # above anyway. Turn it on with a certificate issued for the host.
    verify_hostname: bool = False
    # A user of /var/lib/ganeti/rapi/users with write access (startup jobs).
    # null: no credentials (only for a RAPI without --require-authentication).
    user: str | None = None
    # A file whose first line is that user's password (mode 0600).
    password_file: str | None = None
    # Seconds to wait for a connection and for each answer.
    timeout: float = 10.0
    # Extra attempts for a GET that failed on the way (never for a job submission).
    retries: int = 2


@dataclass(frozen=True)
class WatcherConfig:
    """The cron pass: restart crashed VMs their owners want running."""

    # Restart attempts and node boot ids, JSON (mode 0600, written atomically).
    state_file: str = "/var/lib/snf-watcher/state.json"
    # Written by `snf-watcher pause`, removed by `snf-watcher resume`.
    pause_file: str = "/var/lib/snf-watcher/pause.json"
    # Ganeti's own `gnt-cluster watcher pause` file (an epoch); honoured too.
    ganeti_pause_file: str = "/var/lib/ganeti/watcher.pause"
    # Restart attempts per instance before giving up (Ganeti's MAXTRIES).
    max_tries: int = 5
    # Seconds after its last attempt that an instance's record is forgotten,
    # and a given-up instance is tried again (Ganeti's RETRY_EXPIRATION, 8 h).
    retry_expiration: float = 28800.0
    # Startup jobs submitted per pass at most, oldest failure first.
    max_restarts_per_pass: int = 10
    # Seconds between passes (the cron interval); a lock held for longer than
    # lock_warning_intervals of these is reported as a WARNING.
    interval: float = 300.0
    lock_warning_intervals: int = 3
    # Prometheus textfile-collector file, rewritten atomically by every pass.
    # null: no metrics file.
    metrics_file: str | None = "/var/lib/prometheus/node-exporter/snf_watcher.prom"
    # Reconciliation: every VM is checked at least once per this many seconds
    # (RECONCILIATION_MIN); each pass checks its share, least recently checked first.
    reconcile_min: float = 1800.0
    # What each pass fixes (the rest it reports): stale, orphan, operstate, flavor,
    # nics, build, task, network-stale, network-missing, network-orphan,
    # network-groups, network-unsynced, pool. Stale rows, orphan instances and
    # orphan networks are destructive fixes; network-missing and network-groups
    # change Ganeti (create a network, connect it to a node group).
    reconcile_fix: tuple[str, ...] = (
        "operstate",
        "flavor",
        "nics",
        "build",
        "task",
        "network-stale",
        "network-unsynced",
        "pool",
    )
    # Destructive fixes (stale rows marked DESTROYED, orphans removed) per pass at most.
    max_destructive_per_pass: int = 5


@dataclass(frozen=True)
class Config:
    ganeti: GanetiConfig = field(default_factory=GanetiConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eventd: EventdConfig = field(default_factory=EventdConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    rapi: RapiConfig = field(default_factory=RapiConfig)
    watcher: WatcherConfig = field(default_factory=WatcherConfig)
    # Synnefo names the Ganeti instance of VM <id> "<instance_prefix><id>".
    instance_prefix: str = "snf-"
    # Set when loaded; not a key of the file.
    source: str = field(default="<defaults>", metadata={"internal": True})


def load(path: str = DEFAULT_PATH) -> Config:
    """Read, parse and validate the config file at *path*."""
    import yaml  # here, not at the top: hooks import this module's siblings on a hot path

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    cfg = from_mapping(data, path)
    return dataclasses.replace(cfg, source=path)


def from_mapping(data: Any, path: str = "<config>") -> Config:
    """Build a Config from parsed YAML; raise ConfigError naming file and key."""
    cfg = _build(Config, data, path, "")
    _check_database(cfg.database, path)
    unknown = sorted(set(cfg.watcher.reconcile_fix) - set(RECONCILE_KINDS))
    if unknown:
        known = ", ".join(RECONCILE_KINDS)
        raise ConfigError(
            f"{path}: watcher.reconcile_fix: {', '.join(unknown)}: not a kind of drift ({known})"
        )
    if not cfg.rapi.url.startswith("https://"):
        raise ConfigError(f"{path}: rapi.url: {cfg.rapi.url!r} is not an https:// URL (RAPI is always TLS)")
    return cfg


def _check_database(db: DatabaseConfig, path: str) -> None:
    """Rules across keys: a backend id with a dsn, and no password inside the dsn."""
    if db.dsn is None:
        return
    if db.backend_id is None:
        raise ConfigError(f"{path}: database.backend_id: required when database.dsn is set")
    from psycopg2.extensions import parse_dsn  # here: only configs with a database need it

    try:
        params = parse_dsn(db.dsn)
    except Exception as e:  # noqa: BLE001 -- psycopg2 raises ProgrammingError with libpq's text
        raise ConfigError(f"{path}: database.dsn: not a libpq connection string: {e}".strip()) from None
    if "password" in params:
        raise ConfigError(
            f"{path}: database.dsn: holds a password; put it in database.password_file "
            "or libpq's ~/.pgpass instead, so it is never shown or logged"
        )


def _build(cls: type, data: Any, path: str, prefix: str) -> Any:
    if data is None and prefix:  # a section header with every key under it commented out
        data = {}
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{path}: {where}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: {prefix}{key}: unknown key (known here: {known})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: {key}: required value is missing")
            continue
        values[name] = _convert(hints[name], data[name], path, key)
    return cls(**values)


def _convert(hint: Any, value: Any, path: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, path, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{path}: {key}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        (inner, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key}: expected a list, got {_kind(value)} {value!r}")
        return tuple(_convert(inner, item, path, f"{key}[{n}]") for n, item in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key}: expected {hint.__name__}, got {_kind(value)} {value!r}")
    if hint in (int, float) and value < 0:
        raise ConfigError(f"{path}: {key}: must not be negative, got {value!r}")
    if hint is str and not value and not key.endswith("prefix"):
        raise ConfigError(f"{path}: {key}: must not be empty")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def documented_keys() -> dict[str, Any]:
    """Every key of the file with its default, dotted; the docs are tested against this."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if f.default_factory is not dataclasses.MISSING:
                walk(type(f.default_factory()), prefix + f.name + ".")
            else:
                out[prefix + f.name] = f.default

    walk(Config, "")
    return out
