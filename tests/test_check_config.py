"""`snf-watcher check-config` as an operator runs it: the installed command against a real PostgreSQL
with the Synnefo seed (backend 1 is cluster.ganeti.test) and the fake HTTPS ganeti-rapi.

Each check prints `<LEVEL:8> <area>: <text>`, then `<config path>: <worst level>, <n> problems`; the
exit code is the worst level (0 OK, 1 WARNING, 2 CRITICAL), 3 for a config that does not load.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import command
from watcher_pass import JOBS, job

from snf_watcher import checkconfig
from snf_watcher.syncdb import PRIVILEGES

CLUSTER = "cluster.ganeti.test"  # db_backend 1's clustername in seed.sql
NOT_THE_PASSWORD = "not-the-password"


@pytest.fixture
def node(watch, rapi_server, synnefo_db, pg_server, tmp_path):
    """The `watch` setup made right in every way check-config looks at: this node is the master of
    the seed's cluster, the private directories exist (mode 0700), both password files are mode
    0600, RAPI has two live jobs and Ganeti's users file gives rapiadmin write access.

    run(*args) -> (exit code, stdout lines, stderr) of `snf-watcher --config <cfg> check-config *args`;
    edit(**sections) changes the config file; expected() is every line of the all-OK run."""
    ssconf = watch.ssconf_dir
    (ssconf / "ssconf_cluster_name").write_text(CLUSTER + "\n")
    (ssconf / "rapi").mkdir()
    users = ssconf / "rapi" / "users"
    users.write_text("# Ganeti's RAPI users\nrapiro r3ad\nrapiadmin s3cret write\n")
    for d in (tmp_path / "spool", tmp_path / "state"):
        d.mkdir(mode=0o700)
        d.chmod(0o700)
    db_password = tmp_path / "db.password"
    db_password.write_text("unused: the test server trusts local connections\n")
    db_password.chmod(0o600)
    rapi_server.set_body(JOBS, [job(5, "running"), job(6, "queued")])

    def edit(**sections: dict) -> None:
        data = yaml.safe_load(Path(watch.path).read_text())
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        Path(watch.path).write_text(yaml.safe_dump(data))

    edit(database={"password_file": str(db_password)})
    rapi_password = Path(yaml.safe_load(Path(watch.path).read_text())["rapi"]["password_file"])

    def run(*args: str) -> tuple[int, list[str], str]:
        code, out, err = watch("check-config", *args)
        return code, out.splitlines(), err

    shown_dsn = f"user=postgres dbname={synnefo_db.name} host={pg_server.socketdir} port={pg_server.port}"

    def expected() -> list[str]:
        return [
            f"OK       ganeti: this node is the master of {CLUSTER}",
            f"OK       files: {tmp_path}, {tmp_path}/spool, {tmp_path}/state: writable by this user, "
            "and by nobody else",
            f"OK       secrets: database.password_file {db_password} is readable by this user only",
            f"OK       secrets: rapi.password_file {rapi_password} is readable by this user only",
            f"OK       database: {shown_dsn}: connected; database.backend_id 1 is {CLUSTER}",
            f"OK       rapi: {rapi_server.url} answers as rapiadmin (RAPI version 2, 2 live jobs)",
            f"OK       rapi: user rapiadmin has write access ({users})",
            f"{watch.path}: OK, 0 problems",
        ]

    return SimpleNamespace(
        run=run,
        edit=edit,
        expected=expected,
        path=watch.path,
        ssconf=ssconf,
        users=users,
        rapi_password=rapi_password,
        db_password=db_password,
    )


def replaced(lines: list[str], old_prefix: str, *new: str) -> list[str]:
    """*lines* with the one line starting with *old_prefix* replaced by *new* (any number of lines)."""
    (at,) = [n for n, line in enumerate(lines) if line.startswith(old_prefix)]
    return lines[:at] + list(new) + lines[at + 1 :]


def summary(node, level: str, problems: int) -> str:
    return f"{node.path}: {level}, {problems} problems"


# ------------------------------------------------------------ all well


def test_everything_right_is_ok_with_one_line_per_check(node):
    code, out, err = node.run()
    assert (code, err) == (0, "")
    assert out == node.expected()


def test_json_gives_one_object_per_check_with_the_level_by_name(node):
    node.rapi_password.chmod(0o640)
    code, out, err = node.run("--json")
    assert (code, err) == (1, "")
    text_lines = node.expected()[:-1]  # no summary line in JSON
    text_lines[3] = (
        f"WARNING  secrets: rapi.password_file: {node.rapi_password} is readable by others (mode 0640): "
        f"chmod go-rwx {node.rapi_password}"
    )
    objects = [json.loads(line) for line in out]
    assert [list(o) for o in objects] == [["level", "area", "text"]] * len(text_lines)
    assert [f"{o['level']:8} {o['area']}: {o['text']}" for o in objects] == text_lines
    assert [o["level"] for o in objects] == ["OK", "OK", "OK", "WARNING", "OK", "OK", "OK"]


def test_a_node_that_is_not_the_master_is_told_which_one_is(node):
    (node.ssconf / "ssconf_master_node").write_text("node2.ganeti.test\n")
    code, out, _ = node.run()
    assert code == 0
    assert out == replaced(
        node.expected(),
        "OK       ganeti:",
        "OK       ganeti: this node, node1.ganeti.test, is not the master (node2.ganeti.test is): "
        "eventd and the watcher wait until it is",
    )


# ------------------------------------------------------------ RAPI


def test_a_wrong_rapi_password_is_critical_and_names_the_keys_to_fix(node, rapi_server):
    node.rapi_password.write_text(NOT_THE_PASSWORD + "\n")
    code, out, _ = node.run()
    assert code == 2
    expected = [line for line in node.expected() if not line.startswith("OK       rapi:")]
    assert out == [
        *expected[:-1],
        f"CRITICAL rapi: RAPI {rapi_server.url}/version: 401 Unauthorized as user rapiadmin: check rapi.user "
        "and rapi.password_file (No permission -- see authorization schemes)",
        summary(node, "CRITICAL", 1),
    ]
    (seen,) = rapi_server.seen("/version")
    assert (seen.user, seen.password) == ("rapiadmin", NOT_THE_PASSWORD)


@pytest.mark.parametrize(
    "users, level, code, problem",
    [
        ("rapiadmin s3cret read\n# rapiadmin s3cret write\n", "CRITICAL", 2,
         "user rapiadmin has no write access (add `write` to its line) in {users}"),
        ("rapiro r3ad\n#rapiadmin s3cret write\n", "CRITICAL", 2, "user rapiadmin is not listed in {users}"),
        (None, "WARNING", 1, "cannot read {users} to check write access: No such file or directory"),
    ],
)  # fmt: skip
def test_the_rapi_users_file_must_give_the_user_write_access(node, users, level, code, problem):
    if users is None:
        node.users.unlink()
    else:
        node.users.write_text(users)
    got, out, _ = node.run()
    assert got == code
    assert out == [
        *node.expected()[:-2],
        f"{level:8} rapi: {problem.format(users=node.users)}",
        summary(node, level, 1),
    ]


# ------------------------------------------------------------ the database


@pytest.fixture
def limited_role(node, synnefo_db, pg_server, tmp_path):
    """A login role of its own (roles are cluster-wide, so a unique name), dropped afterwards;
    use() points the config's database at it, with its password file."""
    role = f"snf_limited_{uuid.uuid4().hex[:8]}"
    synnefo_db.query(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-secret'")
    password = tmp_path / "limited.password"
    password.write_text("limited-secret\n")
    password.chmod(0o600)
    dsn = f"host={pg_server.socketdir} port={pg_server.port} user={role} dbname={synnefo_db.name}"
    yield SimpleNamespace(
        name=role,
        password=password,
        use=lambda: node.edit(database={"dsn": dsn, "password_file": str(password)}),
    )
    synnefo_db.query(f"DROP OWNED BY {role}")  # its grants and the snf_watcher_order table it created
    synnefo_db.query(f"DROP ROLE {role}")


def test_a_database_user_with_every_privilege_needs_no_create_once_the_order_table_exists(
    node, limited_role, synnefo_db, pg_server, tmp_path
):
    assert node.run()[0] == 0  # the superuser's first connection makes snf_watcher_order
    for table, privileges in PRIVILEGES.items():
        synnefo_db.query(f"GRANT {', '.join(privileges)} ON {table} TO {limited_role.name}")
    synnefo_db.query(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {limited_role.name}")
    limited_role.use()
    code, out, _ = node.run()
    assert [line for line in out if "database:" in line] == [
        f"OK       database: user={limited_role.name} dbname={synnefo_db.name} host={pg_server.socketdir} "
        f"port={pg_server.port}: connected; database.backend_id 1 is cluster.ganeti.test"
    ]
    assert code == 0


def test_a_database_user_lacking_privileges_gets_each_missing_one_named(
    node, limited_role, synnefo_db, pg_server, tmp_path
):
    granted = {
        ("db_backend", "SELECT"),
        ("db_virtualmachine", "SELECT"),
        ("db_flavor", "SELECT"),
        ("db_networkinterface", "SELECT"),
        ("db_networkinterface", "INSERT"),
    }
    for table, privilege in sorted(granted):
        synnefo_db.query(f"GRANT {privilege} ON {table} TO {limited_role.name}")
    synnefo_db.query(f"GRANT USAGE ON SEQUENCE db_networkinterface_id_seq TO {limited_role.name}")
    # snf_watcher_order does not exist yet: the role makes it on its first connection (and owns it).
    synnefo_db.query(f"GRANT CREATE ON SCHEMA public TO {limited_role.name}")
    limited_role.use()

    code, out, _ = node.run()

    # in the order of syncdb.PRIVILEGES (the role owns snf_watcher_order), then the id sequences of
    # Synnefo's tables rows are inserted into, by table name
    missing = [
        f"{p} on {t}"
        for t, privileges in PRIVILEGES.items()
        for p in privileges
        if (t, p) not in granted and t != "snf_watcher_order"
    ]
    missing += [
        f"USAGE on public.{t}_id_seq"
        for t, privileges in sorted(PRIVILEGES.items())
        if "INSERT" in privileges and t not in ("db_networkinterface", "snf_watcher_order")
    ]
    assert missing[:3] == [
        "UPDATE on db_virtualmachine",
        "UPDATE on db_networkinterface",
        "DELETE on db_networkinterface",
    ]
    assert missing[-1] == "USAGE on public.db_virtualmachinediagnostic_id_seq"
    shown = (
        f"user={limited_role.name} dbname={synnefo_db.name} host={pg_server.socketdir} port={pg_server.port}"
    )
    assert code == 2
    expected = replaced(
        node.expected(),
        "OK       secrets: database.password_file",
        f"OK       secrets: database.password_file {limited_role.password} is readable by this user only",
    )
    expected = replaced(
        expected,
        "OK       database:",
        f"OK       database: {shown}: connected; database.backend_id 1 is {CLUSTER}",
        f"CRITICAL database: the database user lacks {', '.join(missing)}",
    )
    assert out == expected[:-1] + [summary(node, "CRITICAL", 1)]


def test_an_unreachable_database_is_critical(node, tmp_path):
    nowhere = tmp_path / "no-server-here"
    nowhere.mkdir()
    node.edit(database={"dsn": f"host={nowhere} port=5432 user=cyclades dbname=snf_apps"})
    code, out, _ = node.run()
    assert code == 2
    assert out == replaced(
        node.expected()[:-1],
        "OK       database:",
        f"CRITICAL database: user=cyclades dbname=snf_apps host={nowhere} port=5432: connection to server "
        f'on socket "{nowhere}/.s.PGSQL.5432" failed: No such file or directory Is the server running '
        "locally and accepting connections on that socket?",
    ) + [summary(node, "CRITICAL", 1)]


def test_a_backend_of_another_cluster_is_critical(node):
    (node.ssconf / "ssconf_cluster_name").write_text("other.ganeti.test\n")
    code, out, _ = node.run()
    assert code == 2
    expected = replaced(
        node.expected(), "OK       ganeti:", "OK       ganeti: this node is the master of other.ganeti.test"
    )
    (db_line,) = [line for line in expected if line.startswith("OK       database:")]
    assert out == replaced(
        expected[:-1],
        "OK       database:",
        db_line,
        f"CRITICAL database: database.backend_id 1 is cluster {CLUSTER}, but this node's cluster is "
        "other.ganeti.test",
    ) + [summary(node, "CRITICAL", 1)]


def test_no_database_dsn_is_a_warning_only(node):
    node.edit(database={"dsn": None})
    code, out, _ = node.run()
    assert code == 1
    assert out == replaced(
        node.expected()[:-1],
        "OK       database:",
        "WARNING  database: database.dsn is not set: events wait in the outbox and the watcher cannot run "
        "(UNKNOWN)",
    ) + [summary(node, "WARNING", 1)]


# ------------------------------------------------------------ secrets and directories


def test_a_password_file_others_can_read_is_a_warning_with_the_fix(node):
    node.db_password.chmod(0o644)
    code, out, _ = node.run()
    assert code == 1
    assert out == replaced(
        node.expected()[:-1],
        "OK       secrets: database.password_file",
        f"WARNING  secrets: database.password_file: {node.db_password} is readable by others (mode 0644): "
        f"chmod go-rwx {node.db_password}",
    ) + [summary(node, "WARNING", 1)]


def test_a_group_writable_state_dir_is_critical_with_the_fix(node, tmp_path):
    state = tmp_path / "state"
    state.chmod(0o775)
    code, out, _ = node.run()
    assert code == 2
    problem = f"{state} is writable by others (mode 0775): chmod go-w {state}"
    assert out == replaced(
        node.expected()[:-1],
        "OK       files:",
        f"CRITICAL files: watcher.state_file: {problem}",  # state_file and pause_file share the dir
        f"CRITICAL files: watcher.pause_file: {problem}",
    ) + [summary(node, "CRITICAL", 2)]


# ------------------------------------------------------------ the config itself


def test_an_invalid_config_exits_3_with_the_error_on_stderr(make_config):
    path = make_config(rapi={"url": "http://127.0.0.1:5080"})
    r = subprocess.run(
        [command("snf-watcher"), "--config", path, "check-config"], capture_output=True, text=True, timeout=60
    )
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == (
        f"snf-watcher: {path}: rapi.url: 'http://127.0.0.1:5080' is not an https:// URL "
        "(RAPI is always TLS)\n"
    )


# ------------------------------------------------------------ Ganeti's RAPI users file (no I/O)


@pytest.mark.parametrize(
    "users, verdict",
    [
        ("snf-watcher s3cret write\n", None),
        ("snf-watcher s3cret read,write\n", None),
        ("snf-watcher {HA1}0123abcd write,read\n", None),
        ("# the watcher:\nrapiro r3ad\n\nsnf-watcher s3cret write\n", None),
        ("snf-watcher s3cret read\n", "has no write access (add `write` to its line)"),
        ("snf-watcher s3cret\n", "has no write access (add `write` to its line)"),
        ("snf-watcher s3cret readwrite\n", "has no write access (add `write` to its line)"),
        ("# snf-watcher s3cret write\n#snf-watcher s3cret write\n", "is not listed"),
        ("rapiadmin s3cret write\nsnf-watcher-old s3cret write\n", "is not listed"),
        ("", "is not listed"),
    ],
)
def test_write_access_reads_ganetis_users_file(users, verdict):
    assert checkconfig.write_access(users, "snf-watcher") == verdict
