"""The installed package, file by file, and its life: build, lintian, install, upgrade, remove, purge."""

from __future__ import annotations

import configparser
import gzip
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from deb.conftest import PACKAGE, REPO, Build, build_package, install, purge, run, status
from snf_watcher import __version__, cli
from snf_watcher.hooks import HOOK_PATHS, LINK_NAME

pytestmark = [pytest.mark.package, pytest.mark.root]

COMMANDS = ("snf-watcher", "snf-ganeti-eventd", "snf-ganeti-hook", "snf-progress-monitor")
RUN_PARTS_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")  # names Ganeti's hook runner and cron accept
HOOK_LINKS = [Path("/etc/ganeti/hooks") / f"{hpath}-post.d" / LINK_NAME for hpath in HOOK_PATHS]
CONFIG = Path("/etc/synnefo/snf-watcher.yaml")
CRON = Path("/etc/cron.d/snf-watcher")
UNIT = Path("/lib/systemd/system/snf-ganeti-eventd.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/snf-ganeti-eventd.service")
STATE_DIR, LOG_DIR, RUN_DIR = (
    Path("/var/lib/snf-watcher"),
    Path("/var/log/snf-watcher"),
    Path("/run/snf-watcher"),
)


def conffiles() -> list[str]:
    out = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def documented_lintian_tags() -> set[str]:
    """The lintian tags the guide's install section lists, each with its reason."""
    text = (REPO / "docs" / "guide.md").read_text()
    section = text.split("#### What lintian says", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M))


def cron_entries(text: str) -> tuple[dict[str, str], list[list[str]]]:
    """Variables and entries of a cron.d file (entries: 5 time fields, user, command)."""
    env, entries = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            key, _, value = line.partition("=")
            env[key] = value
        else:
            fields = line.split(None, 6)
            assert len(fields) == 7, f"not a cron.d entry: {line!r}"
            entries.append(fields)
    return env, entries


def run_as_cron(timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line of /etc/cron.d/snf-watcher, run as cron runs it: its variables, /bin/sh."""
    env, ((*_, command),) = cron_entries(CRON.read_text())
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=timeout
    )


def unit_file() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    return unit


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- build and lintian


def test_lintian_finds_no_error_and_only_the_warnings_the_readme_explains(build: Build):
    out = run("lintian", "--pedantic", "--info", str(build.deb), check=False).stdout.splitlines()
    tags = [line.split()[:3] for line in out if re.match(r"^[EWP]: ", line)]
    assert [t for t in tags if t[0] == "E:"] == []
    assert {t[2] for t in tags} == documented_lintian_tags()


def test_the_package_depends_on_debians_own_libraries(build: Build):
    fields = run(
        "dpkg-deb", "-f", str(build.deb), "Version", "Depends", "Recommends", "Conflicts", "Replaces"
    ).stdout
    assert f"Version: {__version__}\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M).group(1)
    names = {d.strip().split()[0] for d in depends.split(",")}
    assert {"python3-pyinotify", "python3-requests", "python3-yaml", "python3-psycopg2"} <= names
    assert "ganeti" in re.search(r"^Recommends: (.*)$", fields, re.M).group(1)
    # Synnefo's snf-cyclades-gtools ships commands and a unit of the same names (the guide's migration)
    assert "Conflicts: snf-cyclades-gtools\n" in fields and "Replaces: snf-cyclades-gtools\n" in fields


# ---------------------------------------------------------------- what an installation gives


def test_the_commands_run_from_the_installed_package_and_have_man_pages(installed: Build):
    for command in COMMANDS:
        path = f"/usr/bin/{command}"
        assert run(path, "--version").stdout == f"{command} {__version__}\n"
        assert run(path, "--help").stdout.startswith(f"usage: {command} ")
        page = gzip.decompress(Path(f"/usr/share/man/man8/{command}.8.gz").read_bytes()).decode()
        assert page.startswith(f".TH {command.upper()} 8 ")
    where = run(
        "/usr/bin/python3",
        "-c",
        "import snf_watcher, ganeti_hooks; print(snf_watcher.__file__)",
        cwd=Path("/"),
    )
    assert where.stdout == "/usr/lib/python3/dist-packages/snf_watcher/__init__.py\n"
    page = gzip.decompress(Path("/usr/share/man/man8/snf-watcher.8.gz").read_bytes()).decode()
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    for name in subcommands:
        assert f"\n.SS {name.replace('-', chr(92) + '-')}\n" in page, name


def test_the_hooks_are_where_ganeti_runs_them_and_do_nothing_on_a_node_that_is_not_master(installed: Build):
    for link in HOOK_LINKS:
        assert link.is_symlink() and os.readlink(link) == "/usr/bin/snf-ganeti-hook"
        assert RUN_PARTS_NAME.match(link.name) and os.access(link, os.X_OK)
    listed = run("dpkg", "-L", PACKAGE).stdout.splitlines()
    assert sorted(
        p for p in listed if p.startswith("/etc/ganeti/hooks/") and p.endswith(LINK_NAME)
    ) == sorted(map(str, HOOK_LINKS))
    env = {  # as Ganeti runs a post hook: only its variables, no arguments; the master is another node
        "GANETI_HOOKS_VERSION": "2",
        "GANETI_HOOKS_PHASE": "post",
        "GANETI_HOOKS_PATH": "instance-start",
        "GANETI_MASTER": "some-other-node.example.org",
        "GANETI_INSTANCE_NAME": "snf-1",
        "GANETI_POST_INSTANCE_NAME": "snf-1",
        "GANETI_POST_INSTANCE_NIC_COUNT": "0",
    }
    done = subprocess.run([str(HOOK_LINKS[0])], env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert list((STATE_DIR / "spool").iterdir()) == []


def test_cron_runs_the_pass_every_5_minutes_as_root_and_only_the_master_acts(installed: Build):
    st = CRON.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644) and RUN_PARTS_NAME.match(CRON.name)
    env, entries = cron_entries(CRON.read_text())
    assert env == {"SHELL": "/bin/sh", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    ((*when, user, command),) = entries
    assert (when, user) == (["*/5", "*", "*", "*", "*"], "root")
    assert "/usr/bin/snf-watcher" in command
    # As cron runs it, on this machine, which is no Ganeti master: nothing to do, exit 0, nothing to mail.
    done = run_as_cron()
    assert (done.returncode, done.stdout) == (0, "")


def test_the_eventd_unit_is_valid_restarts_on_failure_and_waits_to_be_enabled(installed: Build):
    done = run("systemd-analyze", "verify", str(UNIT), check=False)
    assert done.returncode == 0, done.stderr
    assert "snf-ganeti-eventd" not in done.stdout + done.stderr
    unit = unit_file()
    assert unit["Service"]["ExecStart"] == "/usr/bin/snf-ganeti-eventd"
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert not WANTS.exists()  # enabled by the operator once the config is edited


def test_the_default_config_is_the_documented_file_root_only_a_conffile_and_loads(installed: Build):
    assert CONFIG.read_bytes() == (REPO / "etc" / "snf-watcher.yaml").read_bytes()
    st = CONFIG.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640)
    assert conffiles() == [str(CRON), "/etc/logrotate.d/snf-watcher", str(CONFIG)]
    done = run("/usr/bin/snf-watcher", "status")
    assert done.stdout == f"0 instances with a restart record in {STATE_DIR}/state.json\n"


def test_state_outbox_log_and_runtime_directories_are_private(installed: Build):
    expected = {
        STATE_DIR: (0, 0, 0o700),
        STATE_DIR / "spool": (0, 0, 0o700),
        LOG_DIR: (0, 4, 0o750),  # group adm reads logs, as in /var/log
        RUN_DIR: (0, 0, 0o700),
    }
    for path, want in expected.items():
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == want, path


# ---------------------------------------------------------------- upgrade, remove, purge


UPGRADE_ENTRY = """snf-watcher (0.1.0+upgrade1) bookworm; urgency=medium

  * A newer version, built by the package tests to upgrade to.

 -- snf-watcher developers <snf-watcher@synnefo.example.org>  Sat, 21 Nov 2026 12:00:00 +0000

"""


def test_an_upgrade_keeps_the_config_the_state_and_the_outbox(installed: Build, tmp_path_factory):
    edited = CONFIG.read_text() + "logging:\n  level: DEBUG\n"
    CONFIG.write_text(edited)
    run("/usr/bin/snf-watcher", "pause", "--reason", "upgrade test")
    progress = subprocess.run(  # one message into the spool, as snf-image would make it
        ["/usr/bin/snf-progress-monitor", "snf-5"],
        input='{"type": "image-copy-progress", "progress": 10}\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert progress.returncode == 0, progress.stderr
    run("/usr/bin/snf-watcher", "outbox")
    before = tree_digest(STATE_DIR)
    assert {"pause.json", "outbox.sqlite"} <= before.keys()

    newer = build_package(tmp_path_factory.mktemp("deb-upgrade"), UPGRADE_ENTRY)
    install(newer.deb)

    assert run("dpkg-query", "-W", "-f=${Version}", PACKAGE).stdout == "0.1.0+upgrade1"
    assert CONFIG.read_text() == edited
    assert tree_digest(STATE_DIR) == before
    outbox = run("/usr/bin/snf-watcher", "outbox").stdout
    assert "image-copy-progress snf-5" in outbox, outbox
    assert run("/usr/bin/snf-watcher", "status").returncode == 0


def test_remove_takes_hooks_commands_and_unit_away_and_purge_everything(build: Build):
    if status():
        purge()
    install(build.deb)
    run("systemctl", "enable", "snf-ganeti-eventd")  # as the guide says; works without a running systemd
    assert WANTS.is_symlink()
    run("/usr/bin/snf-watcher", "pause", "--reason", "remove test")

    run("apt-get", "remove", "-y", "-q", PACKAGE)
    assert status() == "rc"
    assert [link for link in HOOK_LINKS if os.path.lexists(link)] == []
    assert [c for c in COMMANDS if os.path.lexists(f"/usr/bin/{c}")] == []
    assert not UNIT.exists()
    # dpkg keeps conffiles until purge (Debian policy 10.7.3): the cron entry stays, and runs
    # nothing, because it tests for the command first (policy 9.5.1).
    done = run_as_cron()
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    assert CONFIG.exists() and (STATE_DIR / "pause.json").exists()  # a reinstall carries on

    purge()
    assert status() == ""
    left = [p for p in (CRON, CONFIG, UNIT, WANTS, STATE_DIR, LOG_DIR, RUN_DIR) if os.path.lexists(p)]
    left += [p for p in HOOK_LINKS if os.path.lexists(p)]
    left += [
        p
        for name in ("*snf-watcher*", "*snf-ganeti-eventd*", "*snf-ganeti-hook*")
        for p in Path("/etc").rglob(name)
    ]
    assert left == []
    assert [c for c in COMMANDS if os.path.lexists(f"/usr/bin/{c}")] == []
