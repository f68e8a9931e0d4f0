"""A small client for Ganeti's remote API (RAPI), as the cron watcher needs it.

The watcher reads instances, nodes and jobs and submits startup jobs through RAPI on the master: it is
Ganeti's supported remote interface, with Ganeti's own users and locks. Plain data comes out, so the
decision code stays pure; every failure is one RapiError, with a kind to count and decide on and a
one-line text that names the URL and tells an operator what to fix. Two rules are about safety: TLS is
always verified against the cluster certificate (a program that starts VMs must not obey an impostor),
and a job submission is never retried automatically (a PUT that timed out may have queued its job
anyway, and a second one would start the instance twice).
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
import requests.adapters
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema

from snf_watcher.config import RapiConfig

log = logging.getLogger(__name__)

BACKOFF = (0.5, 1.0)  # seconds before the 2nd and the 3rd (and any later) attempt of a GET
USERS_FILE = "/var/lib/ganeti/rapi/users"
NODE_FIELDS = ("name", "bootid", "offline")
RS_NORMAL = 0  # the status of a query value that Ganeti actually knows
_RETRIED = frozenset({"refused", "connection", "timeout", "server"})


class RapiError(Exception):
    """One failed call. kind: refused, tls, unauthorized, forbidden, not-found, server, http (any other
    status), timeout, bad-json, connection or config; the text is for the operator."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """The chain must end at rapi.ca_file, whatever host name the certificate carries.

    Ganeti generates its RAPI certificate for "ganeti.example.com", so a host
    name check would fail on every stock cluster; the self-signed cluster
    certificate as the only trust anchor is the check that matters.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_hostname"] = False
        super().init_poolmanager(*args, **kwargs)


class Rapi:
    """RAPI for one watcher pass; `calls` counts its HTTP requests, retries included, for the metrics."""

    backoff: tuple[float, ...] = BACKOFF

    def __init__(self, cfg: RapiConfig, session: requests.Session | None = None) -> None:
        self.cfg = cfg
        self.calls = 0
        self._base = cfg.url.rstrip("/")
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy, .netrc or CA bundle from the environment for the master
        if not cfg.verify_hostname:
            session.mount(self._base, _PinnedAdapter())
        self._session = session

    def version(self) -> int:
        return self._get("/version", lambda v: type(v) is int, "an integer")

    def instances(self) -> list[dict]:
        return self._get("/2/instances?bulk=1", lambda v: _records(v, "name", str), "a list of instances")

    def jobs(self) -> list[dict]:
        """The live jobs only: Ganeti leaves archived ones out of this list."""
        return self._get("/2/jobs?bulk=1", lambda v: _records(v, "id", int), "a list of jobs")

    def job(self, job_id: int) -> dict | None:
        """One job, archived or not; None when Ganeti never had it (it answers 200 with nulls then)."""
        job = self._get(f"/2/jobs/{int(job_id)}", lambda v: isinstance(v, dict), "a job")
        return None if all(v is None for k, v in job.items() if k != "id") else job

    def nodes(self) -> list[dict]:
        """Name, boot id and offline flag of every node; a boot id Ganeti could not get is None."""
        fields = ",".join(NODE_FIELDS)
        answer = self._get(f"/2/query/node?fields={fields}", _is_node_query, f"a query answer with {fields}")
        return query_rows(answer)

    def networks(self) -> list[dict]:
        return self._get("/2/networks?bulk=1", lambda v: _records(v, "name", str), "a list of networks")

    def groups(self) -> list[dict]:
        return self._get("/2/groups?bulk=1", lambda v: _records(v, "name", str), "a list of node groups")

    def startup(self, instance: str, reason: str) -> int:
        """Submit a startup job, once; *reason* goes into the job's reason trail."""
        return self._submit("PUT", f"/2/instances/{quote(instance, safe='')}/startup", reason)

    def remove(self, instance: str, reason: str) -> int:
        """Submit the removal of an instance (an orphan), once."""
        return self._submit("DELETE", f"/2/instances/{quote(instance, safe='')}", reason)

    def create_network(self, body: dict[str, object], reason: str) -> int:
        return self._submit("POST", "/2/networks", reason, body)

    def connect_network(
        self,
        network: str,
        group: str,
        mode: str,
        link: str,
        conflicts_check: bool,
        reason: str,
        after: int | None = None,
    ) -> int:
        """Connect a network to a node group; *after*: a job this one waits for (its success)."""
        body: dict[str, object] = {
            "group_name": group,
            "network_mode": mode,
            "network_link": link,
            "conflicts_check": conflicts_check,
        }
        if after is not None:
            body["depends"] = _depends(after)
        return self._submit("PUT", f"/2/networks/{quote(network, safe='')}/connect", reason, body)

    def disconnect_network(self, network: str, group: str, reason: str) -> int:
        body = {"group_name": group}
        return self._submit("PUT", f"/2/networks/{quote(network, safe='')}/disconnect", reason, body)

    def remove_network(self, network: str, reason: str, after: tuple[int, ...] = ()) -> int:
        """Remove a network (Ganeti refuses while it is connected to a node group); *after*: jobs
        this one waits for, the disconnections."""
        body = {"depends": _depends(*after)} if after else None
        return self._submit("DELETE", f"/2/networks/{quote(network, safe='')}", reason, body)

    def _submit(self, method: str, path: str, reason: str, body: dict[str, object] | None = None) -> int:
        """A job submission: never repeated, since one that timed out may be queued anyway."""
        try:
            value = self._request(method, path, {"reason": reason}, body)
        except RapiError as e:
            if e.kind in ("timeout", "connection"):
                raise RapiError(e.kind, f"{e}; the job may be queued anyway: check gnt-job list") from None
            raise
        if isinstance(value, str) and value.isdigit():
            value = int(value)  # older Ganeti versions sent job ids as strings
        return self._check(value, path, type(value) is int, "a job id")

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def _get(self, path: str, ok: Callable[[Any], bool], expected: str) -> Any:
        """GETs are safe to repeat: a failure on the way is tried again, a wrong answer is not."""
        attempt = 1
        while True:
            try:
                value = self._request("GET", path)
                return self._check(value, path, ok(value), expected)
            except RapiError as e:
                if e.kind not in _RETRIED or attempt > self.cfg.retries:
                    if attempt == 1:
                        raise
                    raise RapiError(e.kind, f"{e} (gave up after {attempt} attempts)") from None
                delay = self.backoff[min(attempt - 1, len(self.backoff) - 1)]
                log.warning("%s; retrying in %g s", e, delay)
                time.sleep(delay)
                attempt += 1

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: dict[str, object] | None = None,
    ) -> Any:
        url = self._base + path
        options = {"auth": self._auth, "verify": self.cfg.ca_file, "timeout": self.cfg.timeout, "json": body}
        self.calls += 1
        try:
            resp = self._session.request(method, url, params=params, allow_redirects=False, **options)
        except requests.RequestException as e:
            kind, text = self._network_problem(e)
            raise RapiError(kind, f"RAPI {url}: {text}") from None
        except OSError:  # requests' own check that the CA file exists
            text = f"rapi.ca_file {self.cfg.ca_file} does not exist (copy the cluster's rapi.pem there)"
            raise RapiError("config", f"RAPI {url}: {text}") from None
        log.debug("RAPI %s %s: HTTP %d", method, url, resp.status_code)
        if resp.status_code != 200:
            kind, text = self._http_problem(method, resp)
            raise RapiError(kind, f"RAPI {url}: {resp.status_code} {resp.reason}{text}")
        try:
            return resp.json()
        except ValueError:
            text = f"answered HTTP 200 with a body that is not JSON: {resp.text[:80]!r}"
            raise RapiError("bad-json", f"RAPI {url}: {text}") from None

    @functools.cached_property
    def _auth(self) -> tuple[str, str] | None:
        """Read at the first call, so that a pass that needs no RAPI does not fail on the file."""
        return _read_password(self.cfg, self._base)

    def _network_problem(self, e: requests.RequestException) -> tuple[str, str]:
        causes = _causes(e)
        if isinstance(e, (MissingSchema, InvalidSchema, InvalidURL)):
            return "config", f"rapi.url is not a usable https URL: {e}"
        tls = [c for c in causes if isinstance(c, ssl.SSLError)]
        if tls:
            reason = getattr(tls[-1], "verify_message", None) or tls[-1].reason or str(tls[-1])
            hint = "rapi.ca_file must be the certificate ganeti-rapi serves, the cluster's rapi.pem"
            if "mismatch" in str(reason):
                hint = (
                    "with rapi.verify_hostname the certificate must name rapi.url's host in its "
                    "subjectAltName; the CN is not used"
                )
            return "tls", f"TLS verification failed against {self.cfg.ca_file}: {reason} ({hint})"
        if isinstance(e, requests.Timeout) or any(isinstance(c, TimeoutError) for c in causes):
            return "timeout", f"timed out after {self.cfg.timeout:g} s"
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return "refused", "connection refused (is ganeti-rapi running on the master?)"
        reason = str(causes[-1]) or type(causes[-1]).__name__
        return "connection", f"connection failed: {reason} (check rapi.url)"

    def _http_problem(self, method: str, resp: requests.Response) -> tuple[str, str]:
        """Kind and the text after "<status> <reason>" for an answer other than 200."""
        status, detail = resp.status_code, _detail(resp)
        if status == 401:
            who = f"as user {self.cfg.user}" if self.cfg.user else "without credentials"
            return "unauthorized", f" {who}: check rapi.user and rapi.password_file ({detail})"
        if status == 403:
            access = "read" if method == "GET" else "write"
            return "forbidden", f": user {self.cfg.user} lacks {access} access in {USERS_FILE}"
        if status == 404:
            return "not-found", f": {detail} (is rapi.url the base URL of Ganeti's RAPI?)"
        if status >= 500:
            return "server", f": {detail} (see ganeti-rapi's log on the master)"
        return "http", f": {detail}"

    def _check(self, value: Any, path: str, ok: bool, expected: str) -> Any:
        """Plain data goes out only in the shape the decision code relies on."""
        if not ok:
            got = f"{type(value).__name__} {repr(value)[:80]}"
            text = f"answered HTTP 200 with JSON that is not {expected}: {got}"
            raise RapiError("bad-json", f"RAPI {self._base}{path}: {text}")
        return value


def _depends(*jobs: int) -> list[list[object]]:
    """Ganeti's job dependencies (an opcode's `depends`): wait for these jobs, run only if all succeeded."""
    return [[job, ["success"]] for job in jobs]


def query_rows(answer: Any) -> list[dict] | None:
    """Ganeti's query format ({"fields": [...], "data": [[[status, value], ...], ...]}) as dicts.

    A value whose status is not RS_NORMAL (unknown, no data, node offline...) becomes None, so that
    "could not ask" is never mistaken for a value. None: the answer is not in that format.
    """
    try:
        names = [field["name"] for field in answer["fields"]]
        rows = [zip(names, row, strict=True) for row in answer["data"]]
        return [{name: val if status == RS_NORMAL else None for name, (status, val) in row} for row in rows]
    except (TypeError, KeyError, ValueError):
        return None


def _read_password(cfg: RapiConfig, url: str) -> tuple[str, str] | None:
    """A clear error about the password file here beats an obscure 401 later."""
    if cfg.user is None and cfg.password_file is None:
        return None
    if cfg.user is None or cfg.password_file is None:
        raise RapiError("config", f"RAPI {url}: set both rapi.user and rapi.password_file, or neither")
    password, problem = "", "its first line is empty"
    try:
        with open(cfg.password_file, encoding="utf-8") as f:
            password = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        problem = getattr(e, "strerror", None) or "not UTF-8 text"
    if not password:
        raise RapiError("config", f"RAPI {url}: rapi.password_file {cfg.password_file}: {problem}")
    return (cfg.user, password)


def _is_node_query(answer: Any) -> bool:
    rows = query_rows(answer)
    return rows is not None and all(row.keys() >= set(NODE_FIELDS) for row in rows)


def _records(value: Any, key: str, key_type: type) -> bool:
    rows = value if isinstance(value, list) else [None]
    return all(isinstance(row, dict) and isinstance(row.get(key), key_type) for row in rows)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and all it wraps, outermost first: requests buries the socket's error deep."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if not any(e is s for s in seen):
            seen.append(e)
            inner = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
            todo.extend(c for c in inner if isinstance(c, BaseException))
    return seen


def _detail(resp: requests.Response) -> str:
    """Ganeti's own words from an error body ({"code", "message", "explain"}), on one line."""
    try:
        body = resp.json()
        message, explain = body.get("message"), body.get("explain")
        text = str(message if message and message != resp.reason else explain or message)
    except (ValueError, AttributeError):
        text = resp.text[:80]
    return " ".join(text.split())[:200] or "empty body"
