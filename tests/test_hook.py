"""snf-ganeti-hook, on real recorded hook environments, run the way Ganeti runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import HOOKS, command, hook_env

from ganeti_hooks.hook import HookInputError, hook_message, nics_from_env
from snf_watcher import hooks

REPO = Path(__file__).resolve().parent.parent
GANETI_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"


def post_fixtures(hpath: str) -> list[str]:
    return sorted(p.name[: -len(".env")] for p in HOOKS.glob(f"{hpath}-post.*.env"))


def test_instance_add_reports_both_nics_with_their_network():
    msg = hook_message(hook_env("instance-add-post.instance-create"), now=1795254548.5)
    assert msg["type"] == "ganeti-net-status"
    assert (msg["instance"], msg["hook"], msg["operation"]) == (
        "inst1.ganeti.test",
        "instance-add",
        "OP_INSTANCE_CREATE",
    )
    assert msg["event_time"] == [1795254548, 500000]
    assert msg["cluster"] == "cluster.ganeti.test"
    eth0, eth1 = msg["nics"]
    assert eth0 == {
        "index": 0,
        "name": "eth0",
        "uuid": "5b5ac233-dcd6-4860-860a-54a533f994c5",
        "ip": "203.0.113.2",
        "mac": "aa:00:01:2b:ad:27",
        "mode": "bridged",
        "link": "gnt-br0",
        "vlan": None,
        "bridge": "gnt-br0",
        "network": "testnet",
        "network_uuid": "d45ed226-d4d7-4819-9844-75ac2d1b89b0",
        "subnet": "203.0.113.0/24",
    }
    assert (eth1["ip"], eth1["mac"], eth1["network"]) == ("198.51.100.20", "aa:00:00:1a:42:4f", None)


def test_modify_reports_the_nic_list_after_the_operation():
    added = hook_message(hook_env("instance-modify-post.modify-nic-add"), now=0)
    assert [n["ip"] for n in added["nics"]] == ["203.0.113.2", "198.51.100.20", "198.51.100.21"]
    changed = hook_message(hook_env("instance-modify-post.modify-nic-ip"), now=0)
    assert changed["nics"][1]["ip"] == "198.51.100.22"
    removed = hook_message(hook_env("instance-modify-post.modify-nic-remove"), now=0)
    assert len(removed["nics"]) == 2


def test_remove_reports_an_empty_nic_list():
    msg = hook_message(hook_env("instance-remove-post.instance-remove"), now=0)
    assert (msg["instance"], msg["nics"]) == ("inst5.ganeti.test", [])


@pytest.mark.parametrize("name", post_fixtures("instance-start") + post_fixtures("instance-reboot"))
def test_every_recorded_start_and_reboot_reports_the_nics(name):
    env = hook_env(name)
    msg = hook_message(env, now=0)
    assert msg["instance"] == env["GANETI_POST_INSTANCE_NAME"]
    assert len(msg["nics"]) == int(env["GANETI_POST_INSTANCE_NIC_COUNT"])
    assert all(re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", n["mac"]) for n in msg["nics"])


@pytest.mark.parametrize(
    "name",
    [
        "instance-start-pre.startup",
        "instance-stop-post.shutdown",
        "network-add-post.network-add",
        "config-update-post.cluster-modify",
    ],
)
def test_pre_hooks_and_other_paths_are_ignored(name):
    assert hook_message(hook_env(name), now=0) is None


def test_a_nic_count_without_the_nic_is_an_input_error():
    env = hook_env("instance-add-post.instance-create")
    del env["GANETI_POST_INSTANCE_NIC1_MAC"]
    with pytest.raises(HookInputError, match="NIC1_MAC missing although NIC_COUNT is 2"):
        nics_from_env(env)


# ---------------------------------------------------------------- as Ganeti runs it


@pytest.fixture
def run_hook(tmp_path, make_config):
    cfg = make_config()
    rundir = tmp_path / "run"

    def run(env: dict[str, str], config: str = cfg) -> subprocess.CompletedProcess:
        full = {"PATH": GANETI_PATH, "SNF_WATCHER_CONFIG": config, "SNF_WATCHER_RUNDIR": str(rundir), **env}
        return subprocess.run(
            [command("snf-ganeti-hook")],
            env=full,
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )

    run.config = cfg
    run.spool = tmp_path / "spool"
    return run


def spooled(spool: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(spool.glob("*.msg"))] if spool.exists() else []


def test_the_hook_writes_one_spool_message_on_the_master(run_hook):
    run_hook.spool.mkdir()
    proc = run_hook(hook_env("instance-add-post.instance-create"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    (msg,) = spooled(run_hook.spool)
    assert msg["instance"] == "inst1.ganeti.test" and len(msg["nics"]) == 2


def test_the_hook_writes_nothing_on_a_node_that_is_not_the_master(run_hook):
    run_hook.spool.mkdir()
    env = {**hook_env("instance-add-post.instance-create"), "GANETI_MASTER": "node2.ganeti.test"}
    assert run_hook(env).returncode == 0
    assert spooled(run_hook.spool) == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("spool_is_a_file", "NotADirectoryError"),
        ("bad_config", "unknown key"),
        ("missing_nic", "NIC0_MAC missing"),
    ],
)
def test_the_hook_exits_0_on_its_own_failures_and_says_why(run_hook, tmp_path, breakage, expected):
    env = hook_env("instance-start-post.startup")
    config = run_hook.config
    if breakage == "spool_is_a_file":
        run_hook.spool.write_text("not a directory")
    elif breakage == "bad_config":
        config = str(tmp_path / "bad.yaml")
        Path(config).write_text("outbox:\n  colour: red\n")
    else:
        del env["GANETI_POST_INSTANCE_NIC0_MAC"]
    proc = run_hook(env, config)
    assert proc.returncode == 0
    assert expected in proc.stderr.decode()
    assert "instance-start-post for inst1.ganeti.test" in proc.stderr.decode()


def test_a_config_change_reaches_the_next_hook_through_the_cache(run_hook):
    env = hook_env("instance-start-post.startup")
    run_hook.spool.mkdir()
    assert run_hook(env).returncode == 0
    data = yaml.safe_load(Path(run_hook.config).read_text())
    moved = run_hook.spool.parent / "spool2"
    moved.mkdir()
    data["outbox"]["spool_dir"] = str(moved)
    Path(run_hook.config).write_text(yaml.safe_dump(data) + "# edited\n")
    assert run_hook(env).returncode == 0
    assert len(spooled(run_hook.spool)) == 1 and len(spooled(moved)) == 1


def test_with_a_warm_cache_the_hook_imports_neither_yaml_nor_sqlite(run_hook, tmp_path):
    env = hook_env("instance-start-post.startup")
    run_hook.spool.mkdir()
    assert run_hook(env).returncode == 0  # fills the cache
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nfrom ganeti_hooks.hook import main\nmain([])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('yaml', 'sqlite3', 'pyinotify', 'logging', 'argparse', 'dataclasses', 'typing', 'socket'))))\n"
    )
    full = {
        "PATH": GANETI_PATH,
        "SNF_WATCHER_CONFIG": run_hook.config,
        "SNF_WATCHER_RUNDIR": str(tmp_path / "run"),
        **env,
    }
    proc = subprocess.run([os.sys.executable, str(probe)], env=full, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == []
    assert len(spooled(run_hook.spool)) == 2


# ---------------------------------------------------------------- installed layout


def test_hooks_d_holds_a_link_ganeti_will_run_for_every_hook_path():
    links = sorted(p for p in (REPO / "hooks.d").rglob("*") if p.is_symlink())
    expected = sorted(Path(p) for p in hooks.link_paths(str(REPO / "hooks.d")))
    assert links == expected
    for link in links:
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", link.name), f"Ganeti would skip {link.name}"
        assert os.readlink(link) == "/usr/bin/snf-ganeti-hook"


def test_install_hooks_and_remove_hooks(tmp_path):
    hooks_dir = tmp_path / "hooks"
    proc = subprocess.run(
        [
            command("snf-watcher"),
            "install-hooks",
            "--hooks-dir",
            str(hooks_dir),
            "--executable",
            command("snf-ganeti-hook"),
        ],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    for link in hooks.link_paths(str(hooks_dir)):
        assert os.access(link, os.X_OK) and os.path.realpath(link) == os.path.realpath(
            command("snf-ganeti-hook")
        )
    proc = subprocess.run(
        [command("snf-watcher"), "remove-hooks", "--hooks-dir", str(hooks_dir)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert [p for p in hooks_dir.rglob("*") if not p.is_dir()] == []
