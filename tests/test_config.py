"""Loading the config: defaults, and every kind of mistake named precisely."""

from __future__ import annotations

import subprocess

import pytest
from conftest import command

from snf_watcher import config

ALL_DEFAULTS = {
    "ganeti.queue_dir": "/var/lib/ganeti/queue",
    "ganeti.ssconf_dir": "/var/lib/ganeti",
    "ganeti.node_name": None,
    "outbox.path": "/var/lib/snf-watcher/outbox.sqlite",
    "outbox.spool_dir": "/var/lib/snf-watcher/spool",
    "logging.level": "INFO",
    "logging.target": "auto",
    "logging.dir": "/var/log/snf-watcher",
    "eventd.master_check_interval": 1.0,
    "eventd.batch_size": 500,
    "eventd.gap_grace": 300.0,
    "database.dsn": None,
    "database.password_file": None,
    "database.backend_id": None,
    "database.connect_timeout": 10,
    "database.batch_size": 500,
    "database.max_retry_interval": 30.0,
    "rapi.url": "https://127.0.0.1:5080",
    "rapi.ca_file": "/var/lib/ganeti/rapi.pem",
    "rapi.verify_hostname": False,
    "rapi.user": None,
    "rapi.password_file": None,
    "rapi.timeout": 10.0,
    "rapi.retries": 2,
    "watcher.state_file": "/var/lib/snf-watcher/state.json",
    "watcher.pause_file": "/var/lib/snf-watcher/pause.json",
    "watcher.ganeti_pause_file": "/var/lib/ganeti/watcher.pause",
    "watcher.max_tries": 5,
    "watcher.retry_expiration": 28800.0,
    "watcher.max_restarts_per_pass": 10,
    "watcher.interval": 300.0,
    "watcher.lock_warning_intervals": 3,
    "watcher.metrics_file": "/var/lib/prometheus/node-exporter/snf_watcher.prom",
    "watcher.reconcile_min": 1800.0,
    "watcher.reconcile_fix": (
        "operstate",
        "flavor",
        "nics",
        "build",
        "task",
        "network-stale",
        "network-unsynced",
        "pool",
    ),
    "watcher.max_destructive_per_pass": 5,
    "instance_prefix": "snf-",
}


def test_an_empty_file_means_every_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# nothing set\n")
    cfg = config.load(str(path))
    assert cfg.outbox.path == "/var/lib/snf-watcher/outbox.sqlite"
    assert cfg.instance_prefix == "snf-"
    assert config.documented_keys() == ALL_DEFAULTS


def test_values_are_read_and_ints_are_accepted_for_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("instance_prefix: cyc-\neventd:\n  gap_grace: 60\nganeti:\n  node_name: n1.example.org\n")
    cfg = config.load(str(path))
    assert (cfg.instance_prefix, cfg.eventd.gap_grace, cfg.ganeti.node_name) == (
        "cyc-",
        60.0,
        "n1.example.org",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("outbox:\n  pathh: /x\n", "outbox.pathh: unknown key"),
        ("colour: blue\n", "colour: unknown key"),
        ("eventd:\n  batch_size: many\n", "eventd.batch_size: expected int, got str 'many'"),
        ("eventd:\n  batch_size: true\n", "eventd.batch_size: expected int, got bool True"),
        ("eventd:\n  gap_grace: -1\n", "eventd.gap_grace: must not be negative"),
        ("logging:\n  level: LOUD\n", "logging.level: 'LOUD' is not one of 'DEBUG', 'INFO'"),
        ("outbox: /var/lib/x\n", "outbox: expected a mapping, got str"),
        ("ganeti:\n  queue_dir: ''\n", "ganeti.queue_dir: must not be empty"),
        ("- a list\n", "top level: expected a mapping, got a list"),
        ("ganeti: [unclosed\n", "not valid YAML"),
        ("database:\n  dsn: dbname=cyclades\n", "database.backend_id: required when database.dsn is set"),
        (
            "database:\n  dsn: postgresql://cyclades:s3cret@db/cyclades\n  backend_id: 1\n",
            "database.dsn: holds a password; put it in database.password_file",
        ),
        ('database:\n  dsn: "host=\'x"\n  backend_id: 1\n', "database.dsn: not a libpq connection string"),
        ("database:\n  backend_id: one\n", "database.backend_id: expected int, got str 'one'"),
    ],
)
def test_mistakes_name_the_file_the_key_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(str(path))
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_a_required_key_without_a_value_is_named():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithRequired:
        dsn: str

    with pytest.raises(config.ConfigError, match=r"f.yaml: db.dsn: required value is missing"):
        config._build(WithRequired, {}, "f.yaml", "db.")


def test_a_missing_file_is_an_error_not_the_defaults(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read config file"):
        config.load(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("cmd", ["snf-ganeti-eventd", "snf-watcher", "snf-progress-monitor"])
def test_commands_refuse_a_bad_config_with_exit_code_3_before_doing_anything(tmp_path, cmd):
    path = tmp_path / "bad.yaml"
    path.write_text(f"outbox:\n  path: {tmp_path}/outbox.sqlite\n  colour: red\n")
    args = {"snf-watcher": ["outbox"], "snf-progress-monitor": ["snf-1"]}.get(cmd, [])
    proc = subprocess.run(
        [command(cmd), "--config", str(path), *args], input=b"", capture_output=True, timeout=30
    )
    assert proc.returncode == 3
    assert f"{path}: outbox.colour: unknown key" in proc.stderr.decode()
    assert not (tmp_path / "outbox.sqlite").exists()


def test_rapi_must_be_reached_over_tls(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rapi:\n  url: http://master.example.org:5080\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == (
        f"{path}: rapi.url: 'http://master.example.org:5080' is not an https:// URL (RAPI is always TLS)"
    )


def test_reconcile_fix_is_a_list_of_known_kinds(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("watcher:\n  reconcile_fix: [operstate, stale]\n")
    assert config.load(str(path)).watcher.reconcile_fix == ("operstate", "stale")
    path.write_text("watcher:\n  reconcile_fix: [operstate, colour]\n")
    with pytest.raises(config.ConfigError, match="watcher.reconcile_fix: colour: not a kind of drift"):
        config.load(str(path))
    path.write_text("watcher:\n  reconcile_fix: operstate\n")
    with pytest.raises(config.ConfigError, match="watcher.reconcile_fix: expected a list, got str"):
        config.load(str(path))
