"""The real single-node Ganeti cluster of tests/harness/ganeti-sandbox.sh, driven from Python.

Shared by the end-to-end tests (tests/e2e), the package tests (tests/deb) and the demo
(demo/), so it is plain code, not pytest's: whatever fails raises SandboxError with the
command and its output. The `gnt-*` commands run in the host's namespaces (they talk to
luxid over its unix socket); what must run on the node itself goes through `exec`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(__file__).resolve().parent / "harness" / "ganeti-sandbox.sh"
NODE = "node1.ganeti.test"
CLUSTER = "cluster.ganeti.test"
BRIDGE = "gnt-br0"
GANETI_DIR = "/var/lib/ganeti"
QUEUE_DIR = "/var/lib/ganeti/queue"
FAKE_HV = "/var/run/ganeti/fake-hypervisor"  # a "running" instance is a file here
FINAL = ("success", "error", "canceled")
GNT_TIMEOUT = 180
# The sandbox's RAPI, forwarded to the host's loopback (ganeti-sandbox.sh), and its write user.
RAPI_PORT = int(os.environ.get("SNF_E2E_RAPI_PORT", "15080"))
RAPI_USER, RAPI_PASSWORD = "snf-e2e", "snf-e2e-secret"

# Flavor 64 of the tests' databases: 1 vCPU, 64 MiB, no disk; no NIC.
SMALL_VM = ("--no-nics", "-B", "memory=64M,vcpus=1")


class SandboxError(AssertionError):
    """The sandbox or a Ganeti command did not do what was asked; the message says what and why."""


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Sandbox:
    """`ganeti-sandbox.sh` with its output in *log*; *rapi_user*/*rapi_password* set its RAPI write user."""

    log: Path
    rapi_user: str = RAPI_USER
    rapi_password: str = RAPI_PASSWORD

    def run(self, command: str, timeout: float = 900) -> None:
        """Run `ganeti-sandbox.sh <command>`; raise with the tail of its log if it fails."""
        rc = self.try_run(command, timeout)
        if rc != 0:
            what = f"timed out after {timeout}s" if rc is None else f"exited {rc}"
            raise SandboxError(f"ganeti-sandbox.sh {command} {what}; its log ({self.log}):\n{tail(self.log)}")

    def try_run(self, command: str, timeout: float) -> int | None:
        """Run `ganeti-sandbox.sh <command>`, output appended to the log; its exit code (None: timeout)."""
        t0 = time.monotonic()
        env = {
            **os.environ,
            "SANDBOX_RAPI_FORWARD_PORT": str(RAPI_PORT),
            "SANDBOX_RAPI_USER": self.rapi_user,
            "SANDBOX_RAPI_PASSWORD": self.rapi_password,
        }
        with self.log.open("a") as out:
            out.write(f"\n$ {HARNESS} {command}\n")
            out.flush()
            try:
                proc = subprocess.run(
                    ["bash", str(HARNESS), command],
                    env=env,
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

    def crash(self, name: str) -> None:
        """What a guest crash looks like to Ganeti with the fake hypervisor: its runtime file vanishes
        (Ganeti then reports ERROR_down); wait until Ganeti says so."""
        done = self.exec("rm", "-f", f"{FAKE_HV}/{name}")
        if done.returncode != 0:
            raise SandboxError(f"cannot crash {name}: {done.stdout}{done.stderr}")
        wait_status(name, "ERROR_down")


# ---------------------------------------------------------------- gnt-* commands


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


def gnt(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a gnt-* command; raise with its output if it fails (unless check=False)."""
    done = subprocess.run([gnt_exe(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=GNT_TIMEOUT)
    if check and done.returncode != 0:
        raise SandboxError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def submit(command: str, sub: str, *args: str) -> GntResult:
    """`gnt-<x> <sub> --print-jobid ARGS`, waiting for the job as the command does; the job's id and
    the command's outcome (a failed job is a result, not an error: callers expect some to fail)."""
    argv = [gnt_exe(command), sub, "--print-jobid", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=GNT_TIMEOUT)
    output = proc.stdout + proc.stderr
    result = GntResult(argv, proc.returncode, output, job_id_from_output(output))
    if result.job_id is None:
        shown = " ".join([command, sub, *args])
        raise SandboxError(f"no job id in the output of `{shown}` (exit {proc.returncode}):\n{output}")
    return result


def gnt_list(command: str, *args: str) -> list[list[str]]:
    """Rows of a `gnt-* list --no-headers --separator=|`."""
    done = gnt(command, "list", "--no-headers", "--separator=|", *args)
    return [line.split("|") for line in done.stdout.splitlines() if line.strip()]


def add_args(name: str, *options: str, start: bool = False) -> list[str]:
    """`gnt-instance add` for *name* as the tests make instances: diskless, on the sandbox's node, with
    the no-op OS; not installed, so not started, unless *start* (as Synnefo creates them). *options*
    add NICs, params, --submit."""
    install = [] if start else ["--no-install"]
    return [
        "gnt-instance", "add", "-t", "diskless", "-o", "noop+default", *install, "--no-name-check",
        "--no-ip-check", "-n", NODE, *options, name,
    ]  # fmt: skip


def instance_status(name: str) -> str:
    """Ganeti's status of the instance (running, ADMIN_down, ERROR_down, ...), or "gone"."""
    rows = [r for r in gnt_list("gnt-instance", "-o", "name,status") if r[0] == name]
    return rows[0][1] if rows else "gone"


def wait_status(name: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := instance_status(name)) != want:
        if time.monotonic() > deadline:
            raise SandboxError(f"{name} is {got}, not {want}, after {timeout:.0f}s")
        time.sleep(0.3)


def wait_jobs(job_ids: list[int]) -> dict[int, str]:
    """Wait until these Ganeti jobs have ended; their final statuses."""
    deadline = time.monotonic() + GNT_TIMEOUT
    while True:
        statuses = {int(i): st for i, st in gnt_list("gnt-job", "-o", "id,status") if int(i) in job_ids}
        if all(statuses.get(j) in FINAL for j in job_ids):
            return statuses
        if time.monotonic() > deadline:
            raise SandboxError(f"Ganeti jobs {job_ids} did not end within {GNT_TIMEOUT}s: {statuses}")
        time.sleep(0.3)


def remove_instances(prefix: str) -> None:
    """Remove every instance whose name starts with *prefix* (an interrupted session's leftovers)."""
    for (name,) in gnt_list("gnt-instance", "-o", "name"):
        if name.startswith(prefix):
            gnt("gnt-instance", "remove", "-f", name, check=False)


def unused_ids(prefix: str, first: int, count: int = 1) -> list[int]:
    """*count* ids from *first* on (within 100) that no job in the queue, live or archived, names as
    <prefix><id>: Synnefo never reuses ids, and a reused sandbox still holds earlier sessions' jobs."""
    pattern = re.compile(re.escape(prefix).encode() + rb"(\d+)\b")
    used = set()
    for path in Path(QUEUE_DIR).rglob("job-*"):
        used.update(int(m) for m in pattern.findall(path.read_bytes()))
    return sorted(set(range(first, first + 100)) - used)[:count]


# ---------------------------------------------------------------- networks


def ganeti_networks() -> dict[str, list[str]]:
    """Ganeti's networks: name -> the node groups it is connected to."""
    listed = gnt_list("gnt-network", "-o", "name,group_list")  # "default (bridged, gnt-br0, ), ..."
    return {name: re.findall(r"([^\s,()]+) \(", groups) for name, groups in listed}


def add_ganeti_network(
    name: str, cidr: str, *groups: str, gateway: str | None = None, mac_prefix: str | None = None
) -> None:
    """Create *name* (unless it exists) and connect it to *groups*, bridged on the sandbox's bridge."""
    if name not in ganeti_networks():
        options = [f"--network={cidr}"]
        options += [f"--gateway={gateway}"] if gateway else []
        options += [f"--mac-prefix={mac_prefix}"] if mac_prefix else []
        gnt("gnt-network", "add", *options, name)
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
