"""Shared test helpers: the recorded Ganeti 3.0.2 fixtures and a config writer."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pgserver import PgServer, PgServerError, SynnefoDb
from rapi_server import rapi_certs, rapi_config, rapi_server  # noqa: F401  (fixtures: a fake HTTPS ganeti-rapi)

FIXTURES = Path(__file__).parent / "fixtures" / "ganeti-3.0.2"
QUEUE = FIXTURES / "queue"
HOOKS = FIXTURES / "hooks"
SSCONF = FIXTURES / "ssconf"
BIN = Path(sys.executable).parent  # the commands installed beside this interpreter


def job_versions(job_id: int) -> list[bytes]:
    """Every recorded version of job-<id>, in the order Ganeti renamed them into place."""
    files = sorted(QUEUE.glob(f"job-{job_id}.v*.json"), key=lambda p: int(p.name.split(".v")[1][:-5]))
    return [p.read_bytes() for p in files]


def recorded_job_ids() -> list[int]:
    return sorted({int(re.match(r"job-(\d+)\.v", p.name).group(1)) for p in QUEUE.glob("job-*.v*.json")})


def hook_env(name: str) -> dict[str, str]:
    """A recorded hook environment (`env | grep ^GANETI_`), as a dict."""
    env = {}
    for line in (HOOKS / f"{name}.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def command(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{path} is not installed: run `pip install -e .[test]` into this interpreter's environment"
        )
    return str(path)


@pytest.fixture
def make_config(tmp_path):
    """Write a config file for a temp outbox/queue; returns its path."""

    def make(**sections) -> str:
        data = {
            "ganeti": {
                "queue_dir": str(tmp_path / "queue"),
                "ssconf_dir": str(tmp_path / "ssconf"),
                "node_name": "node1.ganeti.test",
            },
            "outbox": {"path": str(tmp_path / "outbox.sqlite"), "spool_dir": str(tmp_path / "spool")},
            "logging": {"target": "stderr"},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        os.makedirs(data["ganeti"]["queue_dir"], exist_ok=True)
        os.makedirs(data["ganeti"]["ssconf_dir"], exist_ok=True)
        master = Path(data["ganeti"]["ssconf_dir"]) / "ssconf_master_node"
        if not master.exists():  # this node is the master unless a test says otherwise
            master.write_text(data["ganeti"]["node_name"] + "\n")
        path = tmp_path / "snf-watcher.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return make


# ---------------------------------------------------------------- a real PostgreSQL with the Synnefo seed


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session, with the Synnefo template loaded. Fails, never skips."""
    server: PgServer | None = None
    problem: str | None = None
    try:
        server = PgServer()
        server.start()
        server.create_template()
    except PgServerError as e:
        problem = str(e)
    except BaseException:
        if server is not None:
            server.destroy()
        raise
    if problem is not None:  # outside the except block, so the report is the reason and nothing else
        if server is not None:
            server.destroy()
        pytest.fail(f"cannot set up the test PostgreSQL server:\n{problem}", pytrace=False)
    assert server is not None
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def synnefo_db(pg_server: PgServer) -> Iterator[SynnefoDb]:
    """A fresh copy of the seeded Synnefo database for one test, dropped afterwards."""
    name = pg_server.new_database()
    db = SynnefoDb(name=name, dsn=pg_server.dsn(name), server=pg_server)
    try:
        yield db
    finally:
        db.close()
        pg_server.drop_database(name)


# Last: watcher_pass uses the helpers above.
from watcher_pass import watch  # noqa: E402, F401  (fixture: whole `snf-watcher` passes)
