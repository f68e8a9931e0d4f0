"""The config file as shipped and as operators edit it, and logging to files.

etc/snf-watcher.yaml is what the Debian package installs as /etc/synnefo/snf-watcher.yaml: every key
commented out with its default and a description above it. It must load as it is, and uncommenting
keys must never change a default behind the operator's back.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import yaml
from conftest import command

from snf_watcher import config

SHIPPED = Path(__file__).parents[1] / "etc" / "snf-watcher.yaml"
COMMENTED_KEY = re.compile(r"^#(?=\s*[a-z_]+:)", re.MULTILINE)  # `#key:` or `#  key:` -> uncommented
KEY_LINE = re.compile(r"^( *)([a-z_]+):(.*)$")


def header_and_body() -> tuple[str, str]:
    """The file's opening comment block (prose, with an example) and the rest, the keys.

    The header's example (`#   database:` ...) looks like commented keys too, but it is an example
    with other values; uncommenting it along with the keys would give two `database` sections.
    """
    header, sep, body = SHIPPED.read_text().partition("\n\n")
    assert sep and all(line.startswith("#") for line in header.splitlines()), header
    return header, body


def uncommented_body() -> str:
    return COMMENTED_KEY.sub("", header_and_body()[1])


def key_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, dotted key, is a section header) of every YAML key line of *text*."""
    out, section = [], None
    for n, line in enumerate(text.splitlines()):
        m = KEY_LINE.match(line)
        if m is None:
            continue
        indent, key, value = m.groups()
        if not indent:
            section = key if not value.strip() else None
            out.append((n, key, section is not None))
        else:
            assert indent == "  " and section is not None, f"line {n + 1}: {line!r}"
            out.append((n, f"{section}.{key}", False))
    return out


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def test_the_shipped_file_loads_as_it_is_into_every_default():
    cfg = config.load(str(SHIPPED))
    assert cfg.source == str(SHIPPED)
    assert cfg == config.Config(source=str(SHIPPED))


def test_uncommenting_every_key_gives_exactly_the_documented_defaults():
    text = uncommented_body()
    data = yaml.safe_load(text)
    assert config.from_mapping(data) == config.Config()
    assert flatten(data) == config.documented_keys()
    leaves = [key for _, key, section in key_lines(text) if not section]
    assert sorted(leaves) == sorted(config.documented_keys())
    assert [key for key, n in Counter(leaves).items() if n > 1] == []  # YAML would keep the last silently
    sections = [key for _, key, section in key_lines(text) if section]
    assert sections == ["ganeti", "outbox", "logging", "eventd", "database", "rapi", "watcher"]


def test_every_key_has_a_description_right_above_it():
    lines = uncommented_body().splitlines()
    undescribed = []
    for n, key, section in key_lines("\n".join(lines)):
        if section:
            continue
        indent = KEY_LINE.match(lines[n]).group(1)
        above = lines[n - 1] if n else ""
        # inside a commented section, `#  # text`; at the top level, `# text`
        description = re.match(rf"#{indent}# \S|# \S" if indent else r"# \S", above)
        if description is None:
            undescribed.append(key)
    assert undescribed == []


def test_nothing_but_keys_is_uncommented():
    """Every line the rule uncomments is a key line, and every key line was commented out."""
    _, body = header_and_body()
    changed = [line[1:] for line in body.splitlines() if COMMENTED_KEY.match(line)]
    assert all(KEY_LINE.match(line) for line in changed)
    assert len(changed) == len(key_lines(uncommented_body()))
    assert key_lines(body) == []  # as shipped, no key is set


def test_the_headers_example_is_a_valid_config():
    header, _ = header_and_body()
    example = [line[4:] for line in header.splitlines() if re.match(r"#   \S|#     \S", line)]
    example = [line for line in example if KEY_LINE.match(line)]  # not the shell commands
    cfg = config.from_mapping(yaml.safe_load("\n".join(example)))
    assert cfg.database == config.DatabaseConfig(
        dsn="host=db.example.org dbname=snf_apps user=cyclades sslmode=verify-full",
        password_file="/etc/synnefo/snf-watcher.dbpass",
        backend_id=1,
    )


def test_a_section_header_with_every_key_commented_out_means_defaults(tmp_path):
    path = tmp_path / "snf-watcher.yaml"
    path.write_text("database:\n#  dsn: null\n#  backend_id: null\nrapi:\n  timeout: 5\nwatcher:\n")
    cfg = config.load(str(path))
    assert cfg.database == config.DatabaseConfig()
    assert cfg.watcher == config.WatcherConfig()
    assert cfg.rapi == config.RapiConfig(timeout=5.0)


# ------------------------------------------------------------ logging target `file`


LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} snf-watcher\[(\d+)\]: INFO: "
    r"this node is not the master \(node2\.ganeti\.test is\): nothing to do\n"
)


def test_logging_to_a_file_reopens_it_after_logrotate_moves_it(make_config, tmp_path):
    (tmp_path / "ssconf").mkdir()
    (tmp_path / "ssconf" / "ssconf_master_node").write_text("node2.ganeti.test\n")
    log_dir = tmp_path / "log"
    path = make_config(
        logging={"target": "file", "dir": str(log_dir)},
        watcher={
            "state_file": str(tmp_path / "state.json"),
            "pause_file": str(tmp_path / "pause.json"),
            "ganeti_pause_file": str(tmp_path / "watcher.pause"),
            "metrics_file": None,
        },
    )

    def run() -> tuple[int, str, str, int]:
        r = subprocess.Popen(
            [command("snf-watcher"), "--config", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.umask(0o022),  # the usual umask: the mode is the code's choice
        )
        out, err = r.communicate(timeout=60)
        return r.returncode, out, err, r.pid

    code, out, err, pid = run()
    assert (code, out, err) == (
        0,
        "snf-watcher OK: this node is not the master (node2.ganeti.test is): nothing to do\n",
        "",
    )
    assert oct(log_dir.stat().st_mode & 0o7777) == "0o750"
    log = log_dir / "snf-watcher.log"
    first = log.read_text()
    m = LOG_LINE.fullmatch(first)
    assert m is not None, first
    assert int(m.group(1)) == pid

    log.rename(log_dir / "snf-watcher.log.1")  # what logrotate does
    code, _, err, pid2 = run()
    assert (code, err) == (0, "")
    second = log.read_text()
    m = LOG_LINE.fullmatch(second)
    assert m is not None, second
    assert int(m.group(1)) == pid2 != pid
    assert (log_dir / "snf-watcher.log.1").read_text() == first
    assert sorted(p.name for p in log_dir.iterdir()) == ["snf-watcher.log", "snf-watcher.log.1"]
