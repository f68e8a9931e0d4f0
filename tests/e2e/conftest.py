"""End-to-end fixtures: a real single-node Ganeti cluster, snf-ganeti-eventd and our hooks.

The cluster is the sandbox of tests/harness/ganeti-sandbox.sh (Debian's ganeti
package, fake hypervisor, private network namespace). Per test session:

- the sandbox is destroyed and brought up afresh (SNF_E2E_REUSE=1 keeps the
  existing cluster), and stopped with `down` at the end (SNF_E2E_DESTROY=1:
  `destroy`);
- a config file, outbox and spool are made in a temporary directory;
- snf-ganeti-eventd from this venv runs as a subprocess in the host namespace
  (hence ganeti.node_name: the host's own name is not the node's);
- snf-ganeti-hook is installed as Ganeti post hook through a small wrapper
  script, because Ganeti runs hooks with an empty environment and no arguments.

These tests need root and the ability to create namespaces. Without them they
fail, loudly: an end-to-end suite that skips itself tests nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from snf_watcher import hooks
from snf_watcher.outbox import Entry, Outbox

HARNESS = Path(__file__).resolve().parents[1] / "harness" / "ganeti-sandbox.sh"
NODE = "node1.ganeti.test"
CLUSTER = "cluster.ganeti.test"
BRIDGE = "gnt-br0"
GANETI_DIR = "/var/lib/ganeti"
QUEUE_DIR = "/var/lib/ganeti/queue"
HOOKS_DIR = Path(hooks.HOOKS_DIR)
VETO_HOOK = HOOKS_DIR / "instance-start-pre.d" / "10-snf-e2e-veto"
FINAL = ("success", "error", "canceled")
WAIT = float(os.environ.get("SNF_E2E_WAIT", "20"))  # seconds to wait for the outbox
GNT_TIMEOUT = 180
# The sandbox's RAPI, forwarded to the host's loopback (ganeti-sandbox.sh), for the watcher's tests.
RAPI_PORT = int(os.environ.get("SNF_E2E_RAPI_PORT", "15080"))
RAPI_USER, RAPI_PASSWORD = "snf-e2e", "snf-e2e-secret"  # the harness's write user

T = TypeVar("T")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "no", "false")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- preconditions


def _require_root_and_namespaces() -> None:
    if sys.platform != "linux":
        pytest.fail(f"end-to-end tests need Linux (namespaces), not {sys.platform}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail(
            "end-to-end tests need root: they install and run a real Ganeti cluster in private "
            "network/UTS/mount namespaces and write /etc/ganeti/hooks. Run them as root "
            "(`sudo .../pytest tests/e2e`), or deselect them with `-m 'not ganeti'`.",
            pytrace=False,
        )
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("end-to-end tests need unshare(1) from util-linux; it is not on PATH", pytrace=False)
    probe = subprocess.run(
        [unshare, "--net", "--uts", "--mount", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.fail(
            "end-to-end tests cannot create network/UTS/mount namespaces on this machine "
            f"(`unshare --net --uts --mount true` exited {probe.returncode}: {probe.stderr.strip()}). "
            "A container needs CAP_SYS_ADMIN (e.g. docker --privileged).",
            pytrace=False,
        )


# ---------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    log: Path

    def run(self, command: str, timeout: float = 900) -> None:
        """Run `ganeti-sandbox.sh <command>`; fail the tests with its output if it fails."""
        rc = self.try_run(command, timeout)
        if rc != 0:
            what = f"timed out after {timeout}s" if rc is None else f"exited {rc}"
            pytest.fail(
                f"ganeti-sandbox.sh {command} {what}; its log ({self.log}):\n{_tail(self.log)}",
                pytrace=False,
            )

    def try_run(self, command: str, timeout: float) -> int | None:
        """Run `ganeti-sandbox.sh <command>`, output appended to the log; its exit code (None: timeout)."""
        t0 = time.monotonic()
        with self.log.open("a") as out:
            out.write(f"\n$ {HARNESS} {command}\n")
            out.flush()
            try:
                proc = subprocess.run(
                    ["bash", str(HARNESS), command],
                    env={**os.environ, "SANDBOX_RAPI_FORWARD_PORT": str(RAPI_PORT)},
                    stdin=subprocess.DEVNULL,
                    stdout=out,  # a file, not a pipe: the daemons it starts outlive it
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = None
            out.write(f"# {command}: exit {rc} after {time.monotonic() - t0:.1f}s\n")
        return rc

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the sandbox namespaces."""
        return subprocess.run(
            ["bash", str(HARNESS), "exec", *argv], capture_output=True, text=True, timeout=GNT_TIMEOUT
        )


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    _require_root_and_namespaces()
    box = Sandbox(tmp_path_factory.mktemp("ganeti-sandbox") / "harness.log")
    if not _env_flag("SNF_E2E_REUSE"):
        box.run("destroy")  # a fresh cluster: job ids, instances and hooks from scratch
    try:
        box.run("up")
    except BaseException:
        box.try_run("down", 300)  # stop what did start
        raise
    try:
        yield box
    finally:
        box.run("destroy" if _env_flag("SNF_E2E_DESTROY") else "down")


# ---------------------------------------------------------------- Ganeti commands


@dataclass
class GntResult:
    argv: list[str]
    returncode: int
    output: str
    job_id: int | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


_JOB_ID_PATTERNS = (
    re.compile(r"\A\s*(\d+)\s*$", re.M),  # --print-jobid: the id alone on the first line
    re.compile(r"^Waiting for job (\d+)\b", re.M),  # startup/shutdown/reboot (JobExecutor)
    re.compile(r"^JobID: (\d+)\b", re.M),
)


def job_id_from_output(text: str) -> int | None:
    for pattern in _JOB_ID_PATTERNS:
        m = pattern.search(text)
        if m:
            return int(m.group(1))
    return None


def gnt_exe(command: str) -> str:
    return shutil.which(command) or f"/usr/sbin/{command}"


def gnt_list(command: str, *args: str) -> list[list[str]]:
    """Rows of a `gnt-* list --no-headers --separator=|` (run in the host namespace)."""
    proc = subprocess.run(
        [gnt_exe(command), "list", "--no-headers", "--separator=|", *args],
        capture_output=True,
        text=True,
        timeout=GNT_TIMEOUT,
    )
    if proc.returncode != 0:
        pytest.fail(f"{command} list {' '.join(args)} failed: {proc.stdout}{proc.stderr}", pytrace=False)
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


# Flavor 64 of the tests' databases: 1 vCPU, 64 MiB, no disk; no NIC.
SMALL_VM = ("--no-nics", "-B", "memory=64M,vcpus=1")


def add_args(name: str, *options: str) -> list[str]:
    """`gnt-instance add` for *name* as the tests make instances: diskless, with the no-op OS
    not installed (so not started), on the sandbox's node; *options* add NICs, params, --submit."""
    return [
        "gnt-instance", "add", "-t", "diskless", "-o", "noop+default", "--no-install", "--no-name-check",
        "--no-ip-check", "-n", NODE, *options, name,
    ]  # fmt: skip


def gnt(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a gnt-* command in the host namespace; fail the test with its output if it fails."""
    done = subprocess.run([gnt_exe(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=GNT_TIMEOUT)
    if check and done.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def ganeti_networks() -> dict[str, list[str]]:
    """Ganeti's networks: name -> the node groups it is connected to."""
    listed = gnt_list("gnt-network", "-o", "name,group_list")  # "default (bridged, gnt-br0, ), ..."
    return {name: re.findall(r"([^\s,()]+) \(", groups) for name, groups in listed}


def add_ganeti_network(name: str, cidr: str, *groups: str, gateway: str | None = None) -> None:
    """Create *name* (unless it exists) and connect it to *groups*, bridged on the sandbox's bridge."""
    if name not in ganeti_networks():
        gnt("gnt-network", "add", f"--network={cidr}", *([f"--gateway={gateway}"] if gateway else []), name)
    for group in groups:
        if group not in ganeti_networks()[name]:
            gnt("gnt-network", "connect", f"--nic-parameters=mode=bridged,link={BRIDGE}", name, group)


def remove_ganeti_networks(prefix: str) -> None:
    """Disconnect and remove every network whose name starts with *prefix* (instances gone first)."""
    for name, groups in ganeti_networks().items():
        if name.startswith(prefix):
            for group in groups:
                gnt("gnt-network", "disconnect", name, group, check=False)
            gnt("gnt-network", "remove", name, check=False)


def wait_jobs(job_ids: list[int]) -> dict[int, str]:
    """Wait until these Ganeti jobs have ended; their final statuses."""
    deadline = time.monotonic() + GNT_TIMEOUT
    while True:
        statuses = {int(i): st for i, st in gnt_list("gnt-job", "-o", "id,status") if int(i) in job_ids}
        if all(statuses.get(j) in ("success", "error", "canceled") for j in job_ids):
            return statuses
        if time.monotonic() > deadline:
            pytest.fail(f"Ganeti jobs {job_ids} did not end within {GNT_TIMEOUT}s: {statuses}")
        time.sleep(0.3)


def remove_instances(prefix: str) -> None:
    """Remove every instance whose name starts with *prefix* (an interrupted session's leftovers)."""
    for (name,) in gnt_list("gnt-instance", "-o", "name"):
        if name.startswith(prefix):
            subprocess.run(
                [gnt_exe("gnt-instance"), "remove", "-f", name], capture_output=True, timeout=GNT_TIMEOUT
            )


def unused_ids(prefix: str, first: int, count: int = 1) -> list[int]:
    """*count* ids from *first* on (within 100) that no job in the queue, live or archived, names as
    <prefix><id>: Synnefo never reuses ids, and a reused sandbox still holds earlier sessions' jobs."""
    pattern = re.compile(re.escape(prefix).encode() + rb"(\d+)\b")
    used = set()
    for path in Path(QUEUE_DIR).rglob("job-*"):
        used.update(int(m) for m in pattern.findall(path.read_bytes()))
    return sorted(set(range(first, first + 100)) - used)[:count]


# ---------------------------------------------------------------- snf-watcher


def op_messages(entries: list[Entry], job_id: int, op_index: int = 0) -> list[dict[str, Any]]:
    """One op's ganeti-op-status messages, in outbox order."""
    return [
        e.message
        for e in entries
        if e.kind == "ganeti-op-status"
        and e.message.get("jobId") == job_id
        and e.message.get("opIndex") == op_index
    ]


def net_messages(entries: list[Entry], instance: str, hook: str | None = None) -> list[dict[str, Any]]:
    """One instance's ganeti-net-status messages (of one hook path, if given), in outbox order."""
    return [
        e.message
        for e in entries
        if e.kind == "ganeti-net-status"
        and e.message.get("instance") == instance
        and (hook is None or e.message.get("hook") == hook)
    ]


@dataclass
class Watcher:
    """snf-ganeti-eventd and the hooks of one test session, and what they produced."""

    dir: Path
    config: Path
    outbox_path: Path
    spool_dir: Path
    eventd_log: Path
    hook_log: Path
    bindir: Path
    proc: subprocess.Popen[bytes] | None = None
    jobs: list[GntResult] = field(default_factory=list)  # every job the tests submitted

    # ------------------------------------------------------------ Ganeti

    def gnt(self, command: str, sub: str, *args: str, expect_ok: bool = True) -> GntResult:
        """Run `gnt-<x> <sub> --print-jobid ARGS` from the host namespace; remember the job."""
        argv = [gnt_exe(command), sub, "--print-jobid", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=GNT_TIMEOUT)
        output = proc.stdout + proc.stderr
        result = GntResult(argv, proc.returncode, output, job_id_from_output(output))
        shown = " ".join([command, sub, *args])
        if result.job_id is None:
            pytest.fail(f"no job id in the output of `{shown}` (exit {proc.returncode}):\n{output}")
        self.jobs.append(result)
        if expect_ok and not result.ok:
            pytest.fail(f"`{shown}` failed (exit {proc.returncode}, job {result.job_id}):\n{output}")
        if not expect_ok and result.ok:
            pytest.fail(f"`{shown}` succeeded (job {result.job_id}) but was expected to fail:\n{output}")
        return result

    @staticmethod
    def gnt_list(command: str, *args: str) -> list[list[str]]:
        return gnt_list(command, *args)

    # ------------------------------------------------------------ eventd

    def start_eventd(self) -> None:
        """Start snf-ganeti-eventd and wait until it has caught up with the queue."""
        with self.eventd_log.open("a") as log:
            log.write(f"# --- snf-ganeti-eventd started by the e2e tests at {time.strftime('%T')}\n")
            log.flush()
            start = log.tell()
            self.proc = subprocess.Popen(
                [str(self.bindir / "snf-ganeti-eventd"), "--config", str(self.config), "--debug"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            self.check_eventd()
            with self.eventd_log.open("rb") as f:
                f.seek(start)
                if b"caught up" in f.read():
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"snf-ganeti-eventd did not catch up within 30s:\n{_tail(self.eventd_log)}")
            time.sleep(0.1)

    def stop_eventd(self) -> None:
        """SIGTERM, as systemd stops it; it must exit 0 promptly."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(
                f"snf-ganeti-eventd ignored SIGTERM for 30s:\n{_tail(self.eventd_log)}", pytrace=False
            )
        if code != 0:
            pytest.fail(
                f"snf-ganeti-eventd exited {code} on SIGTERM:\n{_tail(self.eventd_log)}", pytrace=False
            )

    def check_eventd(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            pytest.fail(
                f"snf-ganeti-eventd is not running (exit {code}); its log:\n{_tail(self.eventd_log)}",
                pytrace=False,
            )

    # ------------------------------------------------------------ the outbox

    def entries(self) -> list[Entry]:
        """What waits in the outbox, oldest first, as the delivery side would read it."""
        box = Outbox(str(self.outbox_path))
        try:
            return box.pending()
        finally:
            box.close()

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e.message for e in self.entries() if kind is None or e.kind == kind]

    def spooled(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.spool_dir) if n.endswith(".msg") and n[0] != ".")
        except FileNotFoundError:
            return []

    def cli_outbox(self) -> list[dict[str, Any]]:
        """`snf-watcher --config X outbox --json --limit 0`, parsed."""
        proc = subprocess.run(
            [
                str(self.bindir / "snf-watcher"),
                "--config",
                str(self.config),
                "outbox",
                "--json",
                "--limit",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"snf-watcher outbox --json failed: {proc.stderr}"
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def wait_for(self, what: str, check: Callable[[list[Entry]], T], timeout: float = WAIT) -> T:
        """Poll the outbox until *check* returns something truthy; fail with a report if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_eventd()
            entries = self.entries()
            result = check(entries)
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(
                    f"waited {timeout:.0f}s for {what}, in vain\n{self.report(entries)}", pytrace=False
                )
            time.sleep(0.1)

    def op_statuses(self, job_id: int, op_index: int = 0) -> list[dict[str, Any]]:
        """This op's ganeti-op-status messages, in outbox order."""
        return op_messages(self.entries(), job_id, op_index)

    def wait_final(self, job_id: int, op_index: int = 0) -> list[dict[str, Any]]:
        """Wait for the op's final status; return all its op-status messages, oldest first."""

        def done(entries: list[Entry]) -> list[dict[str, Any]]:
            msgs = op_messages(entries, job_id, op_index)
            return msgs if any(m["status"] in FINAL for m in msgs) else []

        return self.wait_for(f"the final status of job {job_id} op {op_index}", done)

    def net_statuses(self, instance: str, hook: str | None = None) -> list[dict[str, Any]]:
        return net_messages(self.entries(), instance, hook)

    def wait_net_status(self, instance: str, hook: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until *count* net-status messages of this hook for this instance are in the outbox."""

        def enough(entries: list[Entry]) -> list[dict[str, Any]]:
            msgs = net_messages(entries, instance, hook)
            return msgs if len(msgs) >= count else []

        return self.wait_for(f"{count} ganeti-net-status of the {hook} hook for {instance}", enough)

    def wait_spool_empty(self) -> None:
        """Wait until the daemon has moved every hook message from the spool into the outbox."""
        self.wait_for("the spool to be ingested", lambda _entries: not self.spooled())

    def report(self, entries: list[Entry] | None = None) -> str:
        entries = self.entries() if entries is None else entries
        rows = [f"  {e.seq:>4} {e.key} {json.dumps(e.message, sort_keys=True)[:300]}" for e in entries[-40:]]
        return "\n".join(
            [
                f"outbox {self.outbox_path}: {len(entries)} entries (last 40):",
                *rows,
                f"spool {self.spool_dir}: {self.spooled()}",
                f"eventd log {self.eventd_log} (tail):",
                _tail(self.eventd_log, 30),
                f"hook log {self.hook_log} (tail):",
                _tail(self.hook_log, 20),
            ]
        )


def _remove_our_hooks() -> None:
    hooks.remove(str(HOOKS_DIR))
    try:
        VETO_HOOK.unlink()
    except FileNotFoundError:
        pass


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")  # a dot: Ganeti never runs it half-written
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)


@pytest.fixture(scope="session")
def snf(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watcher]:
    bindir = Path(sys.executable).parent
    for tool in ("snf-ganeti-eventd", "snf-ganeti-hook", "snf-watcher"):
        if not os.access(bindir / tool, os.X_OK):
            pytest.fail(f"{tool} is not installed beside {sys.executable} (pip install -e . first)")
    d = tmp_path_factory.mktemp("snf-watcher")
    w = Watcher(
        dir=d,
        config=d / "snf-watcher.yaml",
        outbox_path=d / "outbox.sqlite",
        spool_dir=d / "spool",
        eventd_log=d / "eventd.log",
        hook_log=d / "hook.log",
        bindir=bindir,
    )
    w.config.write_text(
        yaml.safe_dump(
            {
                "ganeti": {"queue_dir": QUEUE_DIR, "ssconf_dir": GANETI_DIR, "node_name": NODE},
                "outbox": {"path": str(w.outbox_path), "spool_dir": str(w.spool_dir)},
                "logging": {"target": "stderr", "level": "DEBUG"},
            }
        )
    )
    w.hook_log.touch()

    # Leftovers of an interrupted session (with SNF_E2E_REUSE=1): no stale hooks,
    # no instances whose names the tests use.
    _remove_our_hooks()
    remove_instances("snf-9")

    w.start_eventd()
    try:
        # Ganeti clears the environment and passes no arguments: a wrapper supplies them.
        wrapper = d / "snf-ganeti-hook-e2e"
        _write_executable(
            wrapper,
            "#!/bin/sh\n"
            "# snf-watcher end-to-end tests: snf-ganeti-hook with this session's config\n"
            f"SNF_WATCHER_RUNDIR='{d / 'run'}'\n"
            "export SNF_WATCHER_RUNDIR\n"
            f"exec '{bindir / 'snf-ganeti-hook'}' --config '{w.config}' 2>>'{w.hook_log}'\n",
        )
        links = hooks.install(str(HOOKS_DIR), str(wrapper))
        assert len(links) == len(hooks.HOOK_PATHS)
        try:
            yield w
        finally:
            _remove_our_hooks()
    finally:
        w.stop_eventd()


@pytest.fixture
def start_veto(snf: Watcher) -> Iterator[Callable[[], Any]]:
    """A pre hook that vetoes every instance start while it is armed (call the fixture to arm it)."""
    flag = snf.dir / "veto-start"
    _write_executable(
        VETO_HOOK,
        "#!/bin/sh\n"
        "# snf-watcher end-to-end tests: make instance starts fail on demand\n"
        f"[ -e '{flag}' ] || exit 0\n"
        "echo 'instance start vetoed by the snf-watcher e2e tests' >&2\n"
        "exit 1\n",
    )

    @contextmanager
    def armed() -> Iterator[None]:
        flag.touch()
        try:
            yield
        finally:
            flag.unlink(missing_ok=True)

    try:
        yield armed
    finally:
        flag.unlink(missing_ok=True)
        VETO_HOOK.unlink(missing_ok=True)


# ---------------------------------------------------------------- snf-watcher passes


def pass_config(snf: Watcher, dsn: str, tmp_path: Path, prefix: str, **watcher: Any) -> Path:
    """A config for `snf-watcher` passes against the sandbox's RAPI (forwarded) and *dsn*, with
    state, outbox and password file in *tmp_path*; *watcher* keys override the watcher section."""
    password = tmp_path / "rapi.password"
    password.write_text(RAPI_PASSWORD + "\n")
    password.chmod(0o600)
    config = tmp_path / "snf-watcher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ganeti": yaml.safe_load(snf.config.read_text())["ganeti"],
                "outbox": {"path": str(tmp_path / "outbox.sqlite"), "spool_dir": str(tmp_path / "spool")},
                "logging": {"target": "stderr"},
                "instance_prefix": prefix,
                "database": {"dsn": dsn, "backend_id": 1},
                "rapi": {
                    "url": f"https://127.0.0.1:{RAPI_PORT}",
                    "ca_file": f"{GANETI_DIR}/rapi.pem",
                    "user": RAPI_USER,
                    "password_file": str(password),
                },
                "watcher": {
                    "state_file": str(tmp_path / "state.json"),
                    "pause_file": str(tmp_path / "pause.json"),
                    **watcher,
                },
            }
        )
    )
    return config


def reconciler(config: Path) -> Callable[..., dict[str, Any]]:
    """run(*args) -> the report of `snf-watcher --config <config> reconcile --all --json *args`."""

    def run(*args: str) -> dict[str, Any]:
        argv = [str(Path(sys.executable).parent / "snf-watcher"), "--config", str(config), "reconcile"]
        done = subprocess.run([*argv, "--all", "--json", *args], capture_output=True, text=True, timeout=120)
        if not done.stdout.strip():
            pytest.fail(f"snf-watcher reconcile printed no report (exit {done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout)

    return run


def seed_elsewhere(db: Any) -> None:
    """The seed's VMs and networks live on another cluster, not this sandbox: a second backend."""
    db.query(
        'INSERT INTO db_backend (id, clustername, port, hash, "index", drained, offline, hypervisor, '
        "updated, mfree, mtotal, dfree, dtotal, pinst_cnt, ctotal, public) VALUES "
        "(2, 'other.example', 5080, 'x', 1, false, false, 'kvm', now(), 0, 0, 0, 0, 0, 0, true)"
    )
    db.query("UPDATE db_virtualmachine SET backend_id = 2")
    db.query("UPDATE db_backendnetwork SET backend_id = 2, mac_prefix = substr(mac_prefix, 1, 7) || '1'")
