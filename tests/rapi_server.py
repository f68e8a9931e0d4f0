"""A stand-in for ganeti-rapi: real HTTPS on 127.0.0.1, a certificate made at test time, recorded answers.

Why: the RAPI client's job is to get TLS, authentication, retries and Ganeti's answers right, and a
mock of requests would only test our own idea of them. This server speaks HTTPS with a self-signed
certificate that `openssl` makes per test session (key and certificate in one file, like Ganeti's
rapi.pem), checks HTTP Basic auth the way Ganeti 3.0.2's ganeti-rapi does, serves the bodies recorded
from a real 3.0.2 cluster (tests/fixtures/ganeti-3.0.2/rapi, copied from shared/), and can be told
to misbehave: answer an error status N times, sleep before answering, or close the connection.

Auth, as recorded (without --require-authentication): /2/query/* and every PUT need credentials;
credentials that are sent are always checked; a user needs "write" for a PUT. Users: rapiro (read)
and rapiadmin (read, write), with the recorded cluster's passwords.

Reusable fixtures (import them into a test module): rapi_certs (session), rapi_server, rapi_config.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from snf_watcher.config import RapiConfig

RAPI_FIXTURES = Path(__file__).parent / "fixtures" / "ganeti-3.0.2" / "rapi"
USERS = {"rapiro": ("r3ad", {"read"}), "rapiadmin": ("s3cret", {"read", "write"})}
STARTUP_PATH = "/2/instances/inst2.ganeti.test/startup"
NODE_QUERY = "/2/query/node?fields=name,bootid,offline"
NODE1_BOOTID = "df15a980-d87f-4acb-a336-19d63a2c6c47"  # recorded in the watcher's state file

# (method, path as sent) -> recorded body file; from the fixtures' INDEX.tsv, all HTTP 200.
RECORDED = {
    ("GET", "/version"): "version.json",
    ("GET", "/2/instances?bulk=1"): "instances-bulk.json",
    ("GET", "/2/jobs?bulk=1"): "jobs-bulk.json",
    ("GET", "/2/jobs/2"): "job-archived.json",
    ("GET", "/2/jobs/18"): "job-error.json",
    ("GET", "/2/jobs/37"): "job-success.json",
    ("GET", "/2/jobs/9999"): "job-unknown-id.json",
    (
        "GET",
        "/2/query/instance?fields=name,status,admin_state,admin_state_source,oper_state,disks_active,pnode,snodes",
    ): ("query-instance.json"),
    ("PUT", STARTUP_PATH): "put-instance-startup.json",
    ("GET", "/2/networks?bulk=1"): "networks-bulk.json",
    ("GET", "/2/groups?bulk=1"): "groups-bulk.json",
}


def node_query_body(*nodes: tuple[str, str | None, bool]) -> dict:
    """A /2/query/node answer in the recorded query format (no node query was recorded).

    A None boot id is answered the way Ganeti does for an offline node: status 4 (RS_OFFLINE), no value.
    """
    fields = [
        {"name": "name", "title": "Node", "kind": "text", "doc": "Node name"},
        {
            "name": "bootid",
            "title": "BootID",
            "kind": "text",
            "doc": "Random UUID renewed for each system reboot",
        },
        {"name": "offline", "title": "Offline", "kind": "bool", "doc": "Whether node is marked offline"},
    ]
    data = [
        [[0, name], [0, bootid] if bootid else [4, None], [0, offline]] for name, bootid, offline in nodes
    ]
    return {"fields": fields, "data": data}


def make_cert(directory: Path, name: str, cn: str = "127.0.0.1", san: str = "IP:127.0.0.1") -> str:
    """A self-signed key + certificate in one PEM file, as Ganeti keeps rapi.pem; returns its path."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing = "the openssl command is missing (the RAPI tests make their certificates with it)"
        pytest.fail(f"{missing}: apt-get install openssl")
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={cn}"]
    cmd += ["-addext", f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    pem = directory / f"{name}.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    return str(pem)


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    target: str  # path and query, as sent
    path: str
    query: dict[str, list[str]]
    user: str | None  # the Basic-auth user name sent, right password or not
    password: str | None
    body: bytes


class RapiServer:
    """The fake ganeti-rapi; see the module docstring. Start with start(), stop with stop()."""

    def __init__(self, pem: str) -> None:
        self.ca_file = pem
        self._lock = threading.Lock()
        self.require_auth = False
        self.users = dict(USERS)
        self.requests: list[Seen] = []
        self.errors: list[BaseException] = []  # exceptions inside handlers (e.g. writing to a gone client)
        self._routes: dict[tuple[str, str], tuple[int, bytes]] = {}
        for key, name in RECORDED.items():
            self._routes[key] = (200, (RAPI_FIXTURES / name).read_bytes())
        self.set_body(NODE_QUERY, node_query_body(("node1.ganeti.test", NODE1_BOOTID, False)))
        self._faults: dict[str, list[tuple[str, Any]]] = {}
        self._stopping = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self._httpd = _Server(("127.0.0.1", 0), _Handler, ctx, self)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> RapiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def set_body(self, target: str, body: Any, status: int = 200, method: str = "GET") -> None:
        """Answer *method target* (path with query; or the path alone, for any query) with *body*.

        bytes and str are sent as they are; anything else as JSON.
        """
        with self._lock:
            self._routes[(method, target)] = (status, _encode(body))

    def fail_next(self, path: str, status: int, times: int = 1, body: Any = None) -> None:
        """Answer the next *times* requests for *path* (no query) with *status* (and a Ganeti-style body)."""
        if body is None:
            body = {
                "code": status,
                "message": f"Injected failure {status}",
                "explain": "rapi_server.fail_next",
            }
        self._add_fault(path, times, ("status", (status, _encode(body))))

    def sleep_next(self, path: str, seconds: float, times: int = 1) -> None:
        """Wait *seconds* before answering the next *times* requests for *path*, then answer normally."""
        self._add_fault(path, times, ("sleep", seconds))

    def close_next(self, path: str, times: int = 1) -> None:
        """Close the connection without an answer for the next *times* requests for *path*."""
        self._add_fault(path, times, ("close", None))

    def seen(self, path: str, method: str | None = None) -> list[Seen]:
        """The requests for *path* (no query), optionally of one method."""
        with self._lock:
            return [r for r in self.requests if r.path == path and method in (None, r.method)]

    def _add_fault(self, path: str, times: int, fault: tuple[str, Any]) -> None:
        with self._lock:
            self._faults.setdefault(path, []).extend([fault] * times)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        user, password = _basic_auth(h.headers.get("Authorization"))
        seen = Seen(h.command, h.path, split.path, parse_qs(split.query), user, password, body)
        with self._lock:
            self.requests.append(seen)
            faults = self._faults.get(split.path)
            fault = faults.pop(0) if faults else None
        if fault and fault[0] == "close":
            h.close_connection = True
            return
        if fault and fault[0] == "sleep":
            self._stopping.wait(fault[1])
        status, answer, headers = (
            fault[1] + ({},) if fault and fault[0] == "status" else self._answer(seen, h)
        )
        h.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(answer)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(answer)

    def _answer(self, seen: Seen, h: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        """What ganeti-rapi 3.0.2 answers: auth first, then the route, else 404."""
        sent_auth = "Authorization" in h.headers
        if self.require_auth or seen.method != "GET" or seen.path.startswith("/2/query/") or sent_auth:
            known = self.users.get(seen.user or "")
            if known is None or known[0] != seen.password:
                auth = {"WWW-Authenticate": 'Basic realm="Ganeti Remote API"'}
                return 401, (RAPI_FIXTURES / "err-401-put-noauth.json").read_bytes(), auth
            if seen.method != "GET" and "write" not in known[1]:
                return 403, (RAPI_FIXTURES / "err-403-put-readonly.json").read_bytes(), {}
        with self._lock:
            route = self._routes.get((seen.method, seen.target)) or self._routes.get((seen.method, seen.path))
        if route is None:
            return 404, (RAPI_FIXTURES / "err-404-path.json").read_bytes(), {}
        return route + ({},)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type, ctx: ssl.SSLContext, rapi: RapiServer
    ) -> None:
        self.ctx, self.rapi = ctx, rapi
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS per connection, in the connection's own thread, so a client that rejects us blocks nothing."""
        request.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: what the TLS tests want
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.rapi.errors.append(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Ganeti 3.0.2"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        self.server.rapi.handle(self)

    do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- quiet; tests read .requests
        pass


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def _basic_auth(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.startswith("Basic "):
        return None, None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


@pytest.fixture(scope="session")
def rapi_certs(tmp_path_factory) -> SimpleNamespace:
    """cluster: the server's rapi.pem (SAN IP:127.0.0.1); other: an unrelated self-signed one;
    misnamed: one for ganeti.example.com only (Ganeti's default CN), for hostname checks."""
    d = tmp_path_factory.mktemp("rapi-certs")
    return SimpleNamespace(
        cluster=make_cert(d, "cluster"),
        other=make_cert(d, "other"),
        misnamed=make_cert(d, "misnamed", cn="ganeti.example.com", san="DNS:ganeti.example.com"),
    )


@pytest.fixture
def rapi_server(rapi_certs):
    """A running fake ganeti-rapi with the cluster certificate and the recorded answers."""
    server = RapiServer(rapi_certs.cluster).start()
    yield server
    server.stop()


@pytest.fixture
def rapi_config(rapi_server, tmp_path):
    """make(user="rapiadmin", **fields) -> RapiConfig for rapi_server; the password file is written
    for a known user; user=None gives no credentials."""

    def make(user: str | None = "rapiadmin", **fields: Any) -> RapiConfig:
        password_file = None
        if user is not None:
            password_file = tmp_path / f"{user}.password"
            password_file.write_text(USERS.get(user, ("not-" + user, set()))[0] + "\n")
            password_file.chmod(0o600)
            password_file = str(password_file)
        values = {"url": rapi_server.url, "ca_file": rapi_server.ca_file, "user": user}
        values |= {"password_file": password_file, "timeout": 2.0, "retries": 2}
        return RapiConfig(**(values | fields))

    return make
