"""The PostgreSQL harness (tests/pgserver.py): a real server, seeded, one fresh database per test."""

from __future__ import annotations

import conftest
import psycopg2
import pytest
from pgserver import PgServer, PgServerError, SynnefoDb

if not hasattr(conftest, "synnefo_db"):  # until tests/conftest.py imports the fixtures for every test
    from pgserver import pg_server, synnefo_db  # noqa: F401

SEED_VMS = [(101, "STARTED"), (102, "STOPPED"), (103, "BUILD"), (104, "ERROR"), (105, "DESTROYED")]


def test_each_database_starts_from_synnefos_seed_data(synnefo_db: SynnefoDb) -> None:
    assert synnefo_db.query("SELECT id, operstate FROM db_virtualmachine ORDER BY id") == SEED_VMS
    # The seed moved the sequences past its ids, so a Django-style INSERT gets a new one.
    assert synnefo_db.one("SELECT nextval(pg_get_serial_sequence('db_virtualmachine', 'id'))") == (106,)
    assert synnefo_db.one("SELECT current_database()") == (synnefo_db.name,)


@pytest.mark.parametrize("turn", ["first", "second"])
def test_a_test_never_sees_what_another_test_changed(synnefo_db: SynnefoDb, turn: str) -> None:
    # Whichever of the two runs second would fail if the first one's changes leaked.
    assert synnefo_db.query("SELECT id, operstate FROM db_virtualmachine ORDER BY id") == SEED_VMS
    synnefo_db.query("UPDATE db_virtualmachine SET operstate = 'STOPPED' WHERE id = 101")
    synnefo_db.query("DELETE FROM db_virtualmachinemetadata")


def test_two_databases_at_once_are_independent(synnefo_db: SynnefoDb, pg_server: PgServer) -> None:
    other_name = pg_server.new_database()
    other = SynnefoDb(name=other_name, dsn=pg_server.dsn(other_name), server=pg_server)
    try:
        synnefo_db.query("UPDATE db_virtualmachine SET operstate = 'STOPPED' WHERE id = %s", (101,))
        assert synnefo_db.one("SELECT operstate FROM db_virtualmachine WHERE id = 101") == ("STOPPED",)
        assert other.one("SELECT operstate FROM db_virtualmachine WHERE id = 101") == ("STARTED",)
    finally:
        other.close()
        pg_server.drop_database(other_name)


def test_dropping_a_database_disconnects_a_leaked_connection(pg_server: PgServer) -> None:
    name = pg_server.new_database()
    leaked = pg_server.connect(name)
    pg_server.drop_database(name)
    with pytest.raises(psycopg2.OperationalError):
        leaked.cursor().execute("SELECT 1")
    leaked.close()
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert cur.fetchone() == (0,)


def test_committed_data_survives_a_stop_and_start_and_a_crash() -> None:
    server = PgServer()  # its own server: stopping the session's would break the other tests
    try:
        server.start()
        assert server.running
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (v text)")
            cur.execute("INSERT INTO t VALUES ('before stop')")
        conn.close()

        server.stop()
        assert not server.running
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(server.dsn("postgres"))
        server.start()
        conn = server.connect()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES ('before crash')")
        conn.close()

        server.stop("immediate")  # no shutdown checkpoint: the data must come back from the WAL
        server.start()
        conn = server.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT v FROM t ORDER BY v")
            assert cur.fetchall() == [("before crash",), ("before stop",)]
        conn.close()
        assert "database system was not properly shut down" in server.log_text()
    finally:
        server.destroy()
    assert not server.running
    assert not server.base.exists()


def test_a_server_that_cannot_start_says_why() -> None:
    server = PgServer()
    try:
        with open(server.datadir / "postgresql.conf", "a") as f:
            f.write("shared_buffers = 'lots'\n")
        with pytest.raises(PgServerError) as e:
            server.start()
        assert "tail of" in str(e.value)
        assert 'invalid value for parameter "shared_buffers": "lots"' in str(e.value)
    finally:
        server.destroy()


def test_missing_binaries_name_the_path_and_the_debian_package(tmp_path) -> None:
    with pytest.raises(PgServerError) as e:
        PgServer(bindir=tmp_path / "bin")
    assert str(tmp_path / "bin" / "initdb") in str(e.value)
    assert "postgresql-15" in str(e.value)
