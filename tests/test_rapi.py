"""The RAPI client against a real HTTPS server that answers what Ganeti 3.0.2 answered.

Each failure test checks what an operator would see: the error's kind and its whole text.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time

import pytest
import requests
from rapi_server import NODE1_BOOTID, NODE_QUERY, RAPI_FIXTURES, STARTUP_PATH, RapiServer, node_query_body

from snf_watcher.rapi import Rapi, RapiError, query_rows

INSTANCE = "inst2.ganeti.test"
REASON = "snf-watcher: inst2.ganeti.test crashed (ERROR_down), restart 1 of 5"


@pytest.fixture
def rapi(rapi_config):
    """make(user="rapiadmin", **config fields) -> a Rapi for rapi_server, with a quick backoff."""
    made: list[Rapi] = []

    def make(user: str | None = "rapiadmin", **fields) -> Rapi:
        client = Rapi(rapi_config(user, **fields))
        client.backoff = (0.01,)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def recorded(name: str):
    return json.loads((RAPI_FIXTURES / name).read_text())


def fails(call) -> RapiError:
    with pytest.raises(RapiError) as info:
        call()
    return info.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- TLS -------------------------------------------------------------------------------------------


def test_verifies_against_the_cluster_certificate(rapi, rapi_server):
    client = rapi()
    assert client.version() == 2
    assert client.calls == 1
    assert [(r.method, r.target) for r in rapi_server.requests] == [("GET", "/version")]


@pytest.mark.parametrize("which", ["another cluster's certificate", "the system CAs"])
def test_a_certificate_that_does_not_match_is_a_tls_error_and_not_retried(
    which, rapi, rapi_server, rapi_certs
):
    ca_file = rapi_certs.other if which == "another cluster's certificate" else requests.certs.where()
    client = rapi(ca_file=ca_file, retries=2)
    e = fails(client.version)
    assert e.kind == "tls"
    assert str(e) == (
        f"RAPI {rapi_server.url}/version: TLS verification failed against {ca_file}: self-signed certificate"
        " (rapi.ca_file must be the certificate ganeti-rapi serves, the cluster's rapi.pem)"
    )
    assert client.calls == 1
    assert rapi_server.requests == []  # nothing was sent to a server we could not verify


def test_the_cluster_certificate_is_pinned_whatever_name_it_carries(rapi, rapi_certs):
    """Ganeti's own rapi.pem names ganeti.example.com: by default that is accepted, the host name
    only checked with rapi.verify_hostname."""
    server = RapiServer(rapi_certs.misnamed).start()  # CN and SAN ganeti.example.com, like Ganeti's
    try:
        assert rapi(url=server.url, ca_file=rapi_certs.misnamed).version() == 2
        e = fails(rapi(url=server.url, ca_file=rapi_certs.misnamed, verify_hostname=True).version)
        other = fails(rapi(url=server.url, ca_file=rapi_certs.other).version)
    finally:
        server.stop()
    assert e.kind == "tls"
    assert str(e) == (
        f"RAPI {server.url}/version: TLS verification failed against {rapi_certs.misnamed}: IP address"
        " mismatch, certificate is not valid for '127.0.0.1'. (with rapi.verify_hostname the certificate"
        " must name rapi.url's host in its subjectAltName; the CN is not used)"
    )
    assert other.kind == "tls" and "self-signed certificate" in str(other)  # pinning, not "anything goes"


def test_a_missing_ca_file_is_a_config_error_naming_it(rapi, rapi_server, tmp_path):
    missing = str(tmp_path / "rapi.pem")
    e = fails(rapi(ca_file=missing).version)
    assert e.kind == "config"
    assert str(e) == (
        f"RAPI {rapi_server.url}/version: rapi.ca_file {missing} does not exist"
        " (copy the cluster's rapi.pem there)"
    )
    assert rapi_server.requests == []


# --- network -----------------------------------------------------------------------------------------


def test_connection_refused(rapi):
    url = f"https://127.0.0.1:{free_port()}"
    e = fails(rapi(url=url, retries=0).version)
    assert e.kind == "refused"
    assert str(e) == f"RAPI {url}/version: connection refused (is ganeti-rapi running on the master?)"


def test_connection_refused_is_retried_for_a_get(rapi):
    url = f"https://127.0.0.1:{free_port()}"
    client = rapi(url=url, retries=2)
    e = fails(client.instances)
    assert e.kind == "refused"
    assert str(e) == (
        f"RAPI {url}/2/instances?bulk=1: connection refused (is ganeti-rapi running on the master?)"
        " (gave up after 3 attempts)"
    )
    assert client.calls == 3


def test_timeout(rapi, rapi_server):
    rapi_server.sleep_next("/version", 3)
    client = rapi(timeout=0.3, retries=0)
    start = time.monotonic()
    e = fails(client.version)
    assert time.monotonic() - start < 2
    assert e.kind == "timeout"
    assert str(e) == f"RAPI {rapi_server.url}/version: timed out after 0.3 s"


def test_a_get_that_timed_out_is_retried(rapi, rapi_server):
    rapi_server.sleep_next("/2/jobs/37", 3)
    client = rapi(timeout=0.3, retries=1)
    assert client.job(37) == recorded("job-success.json")
    assert client.calls == 2
    assert len(rapi_server.seen("/2/jobs/37")) == 2


def test_a_get_whose_connection_was_closed_is_retried(rapi, rapi_server):
    rapi_server.close_next("/version")
    client = rapi()
    assert client.version() == 2
    assert client.calls == 2


# --- HTTP errors ----------------------------------------------------------------------------------------


def test_401_without_credentials(rapi, rapi_server):
    client = rapi(user=None)
    e = fails(client.nodes)  # /2/query/* needs credentials even without --require-authentication
    assert e.kind == "unauthorized"
    assert str(e) == (
        f"RAPI {rapi_server.url}{NODE_QUERY}: 401 Unauthorized without credentials: check rapi.user and"
        " rapi.password_file (No permission -- see authorization schemes)"
    )
    assert client.calls == 1


def test_401_with_a_wrong_password(rapi_config, rapi_server, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    client = Rapi(rapi_config("rapiadmin", password_file=str(wrong)))
    e = fails(lambda: client.startup(INSTANCE, REASON))
    assert e.kind == "unauthorized"
    assert str(e) == (
        f"RAPI {rapi_server.url}{STARTUP_PATH}: 401 Unauthorized as user rapiadmin: check rapi.user and"
        " rapi.password_file (No permission -- see authorization schemes)"
    )
    [put] = rapi_server.seen(STARTUP_PATH)
    assert (put.user, put.password) == ("rapiadmin", "not-the-password")


def test_403_for_a_read_only_user_submitting_a_job(rapi, rapi_server):
    client = rapi(user="rapiro")
    e = fails(lambda: client.startup(INSTANCE, REASON))
    assert e.kind == "forbidden"
    assert str(e) == (
        f"RAPI {rapi_server.url}{STARTUP_PATH}: 403 Forbidden: user rapiro lacks write access in"
        " /var/lib/ganeti/rapi/users"
    )
    assert len(rapi_server.seen(STARTUP_PATH)) == 1


def test_404_for_a_wrong_base_url(rapi, rapi_server):
    client = rapi(url=rapi_server.url + "/ganeti/")
    e = fails(client.version)
    assert e.kind == "not-found"
    assert str(e) == (
        f"RAPI {rapi_server.url}/ganeti/version: 404 Not Found: Nothing matches the given URI"
        " (is rapi.url the base URL of Ganeti's RAPI?)"
    )
    assert client.calls == 1


def test_5xx_is_retried_for_a_get_then_reported(rapi, rapi_server, caplog):
    rapi_server.fail_next("/2/instances", 500, times=3)
    client = rapi(retries=2)
    e = fails(client.instances)
    assert e.kind == "server"
    text = (
        f"RAPI {rapi_server.url}/2/instances?bulk=1: 500 Internal Server Error: Injected failure 500"
        " (see ganeti-rapi's log on the master)"
    )
    assert str(e) == text + " (gave up after 3 attempts)"
    assert client.calls == 3
    assert len(rapi_server.seen("/2/instances")) == 3
    assert [r.getMessage() for r in caplog.records if r.name == "snf_watcher.rapi"] == [
        text + "; retrying in 0.01 s",
        text + "; retrying in 0.01 s",
    ]


def test_a_get_recovers_from_one_5xx_after_the_default_backoff(rapi_config, rapi_server):
    rapi_server.fail_next("/2/jobs", 502)
    client = Rapi(rapi_config())
    start = time.monotonic()
    assert client.jobs() == recorded("jobs-bulk.json")
    assert time.monotonic() - start >= 0.5
    assert client.calls == 2


def test_a_job_submission_is_never_retried(rapi, rapi_server):
    rapi_server.fail_next(STARTUP_PATH, 500, times=3)
    client = rapi(retries=2)
    e = fails(lambda: client.startup(INSTANCE, REASON))
    assert e.kind == "server"
    assert str(e) == (
        f"RAPI {rapi_server.url}{STARTUP_PATH}: 500 Internal Server Error: Injected failure 500"
        " (see ganeti-rapi's log on the master)"
    )
    assert len(rapi_server.seen(STARTUP_PATH)) == 1
    assert client.calls == 1


def test_a_job_submission_that_lost_its_answer_says_the_job_may_exist(rapi, rapi_server):
    rapi_server.close_next(STARTUP_PATH)
    client = rapi(retries=2)
    e = fails(lambda: client.startup(INSTANCE, REASON))
    assert e.kind == "connection"
    assert str(e) == (
        f"RAPI {rapi_server.url}{STARTUP_PATH}: connection failed: Remote end closed connection without"
        " response (check rapi.url); the job may be queued anyway: check gnt-job list"
    )
    assert len(rapi_server.seen(STARTUP_PATH)) == 1


# --- bodies -----------------------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_reported_and_not_retried(rapi, rapi_server):
    body = (
        "<html><head><title>502 Bad Gateway</title></head><body>nginx says no, at some length</body></html>"
    )
    rapi_server.set_body("/version", body)
    client = rapi(retries=2)
    e = fails(client.version)
    assert e.kind == "bad-json"
    assert (
        str(e)
        == f"RAPI {rapi_server.url}/version: answered HTTP 200 with a body that is not JSON: {body[:80]!r}"
    )
    assert client.calls == 1


def test_json_of_the_wrong_shape_is_bad_json(rapi, rapi_server):
    rapi_server.set_body("/2/instances?bulk=1", {"instances": []})
    rapi_server.set_body(STARTUP_PATH, {"job_id": 40}, method="PUT")
    client = rapi()
    e = fails(client.instances)
    assert e.kind == "bad-json"
    assert str(e) == (
        f"RAPI {rapi_server.url}/2/instances?bulk=1: answered HTTP 200 with JSON that is not a list of"
        " instances: dict {'instances': []}"
    )
    e = fails(lambda: client.startup(INSTANCE, REASON))
    assert (e.kind, str(e)) == (
        "bad-json",
        f"RAPI {rapi_server.url}{STARTUP_PATH}: answered HTTP 200 with JSON that is not a job id:"
        " dict {'job_id': 40}",
    )


def test_instances_and_jobs_are_ganetis_lists(rapi):
    client = rapi()
    instances = client.instances()
    assert instances == recorded("instances-bulk.json")
    assert {i["name"]: i["status"] for i in instances} == {
        "inst1.ganeti.test": "running",
        "inst2.ganeti.test": "ADMIN_down",
        "inst3.ganeti.test": "ERROR_down",
        "inst4.ganeti.test": "ERROR_up",
        "inst6.ganeti.test": "ADMIN_offline",
    }
    assert client.jobs() == recorded("jobs-bulk.json")
    assert client.calls == 2


def test_job_finds_live_and_archived_jobs_and_none_for_an_unknown_id(rapi):
    client = rapi()
    assert client.job(37) == recorded("job-success.json")
    assert client.job(18)["status"] == "error"  # a startup vetoed by a hook
    assert client.job(2) == recorded("job-archived.json")
    assert recorded("job-unknown-id.json")["status"] is None  # Ganeti answers 200 with nulls...
    assert client.job(9999) is None  # ...which means it never had that job


def test_nodes_parses_the_query_format(rapi, rapi_server):
    client = rapi()
    assert client.nodes() == [{"name": "node1.ganeti.test", "bootid": NODE1_BOOTID, "offline": False}]
    assert rapi_server.requests[-1].target == NODE_QUERY
    rapi_server.set_body(
        NODE_QUERY,
        node_query_body(("node1.ganeti.test", NODE1_BOOTID, False), ("node2.ganeti.test", None, True)),
    )
    assert client.nodes()[1] == {"name": "node2.ganeti.test", "bootid": None, "offline": True}
    rapi_server.set_body(NODE_QUERY, {"fields": [{"name": "name"}], "data": [[[0, "node1.ganeti.test"]]]})
    e = fails(client.nodes)
    assert e.kind == "bad-json"
    assert "is not a query answer with name,bootid,offline" in str(e)


def test_query_rows_reads_the_recorded_instance_query():
    rows = query_rows(recorded("query-instance.json"))
    assert rows[0] == {
        "name": "inst1.ganeti.test",
        "status": "running",
        "admin_state": "up",
        "admin_state_source": "admin",
        "oper_state": True,
        "disks_active": True,
        "pnode": "node1.ganeti.test",
        "snodes": [],
    }
    assert [row["status"] for row in rows][2] == "ERROR_down"
    assert query_rows({"fields": [{"name": "name"}], "data": [[[0, "a"], [0, "b"]]]}) is None
    assert query_rows([1, 2]) is None


def test_startup_sends_the_reason_and_returns_the_job_id(rapi, rapi_server):
    client = rapi()
    assert client.startup(INSTANCE, REASON) == 37
    [put] = rapi_server.seen(STARTUP_PATH)
    assert (put.method, put.query, put.user, put.body) == ("PUT", {"reason": [REASON]}, "rapiadmin", b"")
    rapi_server.set_body(STARTUP_PATH, '"38"', method="PUT")
    assert client.startup(INSTANCE, REASON) == 38  # job ids as strings, as older Ganeti versions sent them


# --- credentials -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, problem",
    [(None, "No such file or directory"), ("\nsecond-line\n", "its first line is empty")],
)
def test_an_unusable_password_file_is_a_config_error(content, problem, rapi_config, rapi_server, tmp_path):
    path = tmp_path / "password"
    if content is not None:
        path.write_text(content)
    client = Rapi(rapi_config("rapiadmin", password_file=str(path)))
    e = fails(client.version)
    assert e.kind == "config"
    assert str(e) == f"RAPI {rapi_server.url}: rapi.password_file {path}: {problem}"
    assert "second-line" not in str(e)
    assert client.calls == 0
    assert rapi_server.requests == []


def test_a_user_without_a_password_file_is_a_config_error(rapi_config, rapi_server):
    e = fails(Rapi(rapi_config("rapiadmin", password_file=None)).version)
    assert e.kind == "config"
    assert str(e) == f"RAPI {rapi_server.url}: set both rapi.user and rapi.password_file, or neither"


def test_the_password_never_appears_in_errors_or_logs(rapi_config, rapi_server, rapi_certs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password = "Zx9-very-secret-Q"
    rapi_server.users["watcher"] = (password, {"read"})
    (tmp_path / "pw").write_text(password + "\n")

    def client(**fields) -> Rapi:
        rapi = Rapi(rapi_config(fields.pop("user", "watcher"), password_file=str(tmp_path / "pw"), **fields))
        rapi.backoff = (0.01,)
        return rapi

    assert client().nodes()[0]["name"] == "node1.ganeti.test"
    rapi_server.fail_next("/version", 500, times=3)
    rapi_server.sleep_next("/2/jobs/37", 3)
    errors = [
        fails(lambda: client().startup(INSTANCE, REASON)),  # 403
        fails(lambda: client(user="rapiadmin").startup(INSTANCE, REASON)),  # 401
        fails(client().version),  # 500, retried
        fails(lambda: client(timeout=0.3, retries=0).job(37)),
        fails(client(ca_file=rapi_certs.other).version),
    ]
    assert [e.kind for e in errors] == ["forbidden", "unauthorized", "server", "timeout", "tls"]
    for e in errors:
        assert password not in str(e) and password not in repr(e)
    token = base64.b64encode(f"watcher:{password}".encode()).decode()  # the Authorization header's value
    assert password not in caplog.text and token not in caplog.text
    assert caplog.records  # the retries were logged, so there was something to search
