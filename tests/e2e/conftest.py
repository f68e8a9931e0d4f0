"""End-to-end fixtures: a real single-node Ganeti cluster, snf-ganeti-eventd and our hooks.

The cluster is the sandbox of tests/harness/ganeti-sandbox.sh (Debian's ganeti
package, fake hypervisor, private network namespace), driven through
tests/sandbox.py. Per test session:

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
from sandbox import (
    FINAL,
    GANETI_DIR,
    NODE,
    QUEUE_DIR,
    RAPI_PASSWORD,
    RAPI_PORT,
    RAPI_USER,
    GntResult,
    Sandbox,
    SandboxError,
    gnt_list,
    remove_instances,
    submit,
    tail,
)

from snf_watcher import hooks, spool
from snf_watcher.outbox import Entry, Outbox

HOOKS_DIR = Path(hooks.HOOKS_DIR)
VETO_HOOK = HOOKS_DIR / "instance-start-pre.d" / "10-snf-e2e-veto"
WAIT = float(os.environ.get("SNF_E2E_WAIT", "20"))  # seconds to wait for the outbox

T = TypeVar("T")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "no", "false")


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


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    _require_root_and_namespaces()
    box = Sandbox(tmp_path_factory.mktemp("ganeti-sandbox") / "harness.log")
    try:
        if not _env_flag("SNF_E2E_REUSE"):
            box.run("destroy")  # a fresh cluster: job ids, instances and hooks from scratch
        try:
            box.run("up")
        except BaseException:
            box.try_run("down", 300)  # stop what did start
            raise
    except SandboxError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield box
    finally:
        box.run("destroy" if _env_flag("SNF_E2E_DESTROY") else "down")


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
        result = submit(command, sub, *args)
        self.jobs.append(result)
        shown = " ".join([command, sub, *args])
        if expect_ok and not result.ok:
            pytest.fail(f"`{shown}` failed (exit {result.returncode}, job {result.job_id}):\n{result.output}")
        if not expect_ok and result.ok:
            pytest.fail(f"`{shown}` succeeded (job {result.job_id}), expected to fail:\n{result.output}")
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
                pytest.fail(f"snf-ganeti-eventd did not catch up within 30s:\n{tail(self.eventd_log)}")
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
            pytest.fail(f"snf-ganeti-eventd ignored SIGTERM for 30s:\n{tail(self.eventd_log)}", pytrace=False)
        if code != 0:
            pytest.fail(
                f"snf-ganeti-eventd exited {code} on SIGTERM:\n{tail(self.eventd_log)}", pytrace=False
            )

    def check_eventd(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            pytest.fail(
                f"snf-ganeti-eventd is not running (exit {code}); its log:\n{tail(self.eventd_log)}",
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
        return spool.names(str(self.spool_dir))

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
                tail(self.eventd_log, 30),
                f"hook log {self.hook_log} (tail):",
                tail(self.hook_log, 20),
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
