"""The Debian package as an operator gets it: built from a clean copy of this tree, checked
with lintian, installed with `apt-get install ./snf-watcher_*.deb` on this machine, and
removed and purged again.

These tests change the machine (/usr/bin, /etc, /var/lib/snf-watcher), so they need root,
and they run in a pytest session of their own (`make test` runs `pytest -m package tests/deb`
after the rest): the other end-to-end tests put their own hook links where the package puts its.
Without root or Debian's build tools they fail, loudly, with what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.conftest import sandbox  # noqa: F401  (fixture: the real Ganeti cluster)

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3 and tools, not a venv's or pyenv's
APT_ENV = {"PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
PACKAGE = "snf-watcher"


@dataclass(frozen=True)
class Build:
    deb: Path
    log: Path
    tree: Path


def run(
    *argv: str, check: bool = True, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A system command with Debian's PATH; a failure fails the test with its output."""
    done = subprocess.run(
        argv, cwd=cwd, env=APT_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def source_files() -> list[str]:
    """What a clean checkout has: the tracked files, plus new ones not yet committed."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    )
    return [f for f in listed.stdout.decode().split("\0") if f and os.path.lexists(REPO / f)]


def build_package(workdir: Path, changelog_entry: str | None = None) -> Build:
    """`dpkg-buildpackage -us -uc -b` in a copy of the tree; *changelog_entry* makes a newer version."""
    tree = workdir / "snf-watcher"
    for name in source_files():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target, follow_symlinks=False)
    if changelog_entry is not None:
        changelog = tree / "debian" / "changelog"
        changelog.write_text(changelog_entry + changelog.read_text())
    log = workdir / "build.log"
    with log.open("w") as out:
        done = subprocess.run(
            ["dpkg-buildpackage", "-us", "-uc", "-b"],
            cwd=tree,
            env=APT_ENV,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    if done.returncode != 0:
        pytest.fail(
            f"dpkg-buildpackage exited {done.returncode}; its log ({log}):\n{log.read_text()[-4000:]}"
        )
    (deb,) = workdir.glob(f"{PACKAGE}_*_all.deb")
    return Build(deb=deb, log=log, tree=tree)


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the package tests install a .deb on this machine: run them as root (`make test` does)")
    tools = ("dpkg-buildpackage", "lintian", "apt-get", "systemd-analyze")
    missing = [t for t in tools if not shutil.which(t, path=SYSTEM_PATH)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: `make test` installs Debian's build tools (make package-tools)"
        )


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    require_root_and_tools()
    return build_package(tmp_path_factory.mktemp("deb"))


def install(deb: Path) -> None:
    """As the guide says: apt-get pulls the Debian dependencies (and the recommended cron)."""
    run("apt-get", "install", "-y", "-q", f"./{deb.name}", cwd=deb.parent, timeout=900)


def purge() -> None:
    run("apt-get", "purge", "-y", "-q", PACKAGE)


def status() -> str:
    """dpkg's status of the package: `ii` installed, `rc` removed with its conffiles, `` gone."""
    done = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE, check=False)
    abbrev = done.stdout.strip() if done.returncode == 0 else ""
    return "" if abbrev[1:2] == "n" else abbrev  # "un", "pn": not installed, nothing left


@pytest.fixture
def installed(build: Build) -> Iterator[Build]:
    """The package installed from scratch for one test, and purged after it."""
    if status():
        purge()
    install(build.deb)
    try:
        yield build
    finally:
        if status():
            purge()
