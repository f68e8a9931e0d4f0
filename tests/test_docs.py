"""The docs (README.md and docs/*.md) against the code: every command line they show parses
with the command's own argument parser, every option and subcommand they name exists, every
config key they name (or set in a YAML example) is a key of the config schema, and the guide's
config reference lists every key with its true default. Docs that drift fail here, not in an
operator's terminal.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ganeti_hooks import eventd, hook, progress
from snf_watcher import cli, config

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
GUIDE = REPO / "docs" / "guide.md"
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "snf-watcher": cli.build_parser,
    "snf-ganeti-eventd": eventd.build_parser,
    "snf-ganeti-hook": hook.build_parser,
    "snf-progress-monitor": progress.build_parser,
}
FILES = (".log", ".pem", ".service", ".yaml", ".sqlite", ".json")  # file names that look like keys
SECTIONS = ("ganeti", "outbox", "logging", "eventd", "database", "rapi", "watcher")


def docs() -> str:
    """Every doc, one after the other."""
    return "\n".join(path.read_text() for path in DOCS)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def spans(text: str) -> list[str]:
    """Inline code spans, outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def command_lines(text: str) -> list[tuple[str, str]]:
    """(command line, its trailing comment) for each of our commands the text shows."""
    found = []
    for block in code_blocks(text, "sh"):
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if code.split()[:1] and code.split()[0] in PARSERS:
                found.append((code.strip(), comment))
    for span in spans(text):
        words = span.split()
        if words[0] in PARSERS and len(words) > 2 and not re.search(r"<|[A-Z]{3,}", span):
            found.append((span, ""))
    return found


def all_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Option strings by subcommand ('' for the command itself)."""
    out = {"": {o for a in parser._actions for o in a.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {o for a in sub._actions for o in a.option_strings}
    return out


def test_every_subcommand_the_docs_name_exists():
    subcommands = all_options(cli.build_parser()).keys() - {""}
    named = {span.split()[1] for span in spans(docs()) if re.fullmatch(r"snf-watcher [a-z][a-z-]*", span)}
    assert len(named) > 5 and sorted(named - subcommands) == []


def test_the_docs_show_our_commands_at_all():
    lines = [line for line, _ in command_lines(docs())]
    assert "snf-watcher requeue 42 43" in lines and "make demo" not in lines and len(lines) > 8
    assert [path.name for path in DOCS] == ["README.md", "guide.md", "troubleshooting.md"]


@pytest.mark.parametrize("line, comment", command_lines(docs()), ids=lambda v: v[:60])
def test_every_command_line_in_the_docs_parses_and_its_comment_names_real_options(line, comment):
    argv = shlex.split(line)
    parser = PARSERS[argv[0]]()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"the docs show `{line}`, which {argv[0]} refuses (exit {e.code})")
    options = all_options(parser)
    known = options[""] | options.get(getattr(args, "command", None) or "", set())
    named = set(re.findall(r"(--[a-z][a-z-]*)", comment))
    assert named <= known, f"`{line}` # {comment}: no such option {sorted(named - known)}"


def test_every_option_the_docs_name_on_their_own_exists():
    known = {o for build in PARSERS.values() for opts in all_options(build()).values() for o in opts}
    named = [w for span in spans(docs()) if span.startswith("--") for w in span.split() if w.startswith("--")]
    assert named, "the docs name no option on its own"
    missing = []
    for option in named:
        if option.endswith("-KIND"):  # a placeholder: --fix-<kind>
            assert {f"--fix-{kind}" for kind in config.RECONCILE_KINDS} <= known
        elif option not in known:
            missing.append(option)
    assert missing == []


def test_every_config_key_the_docs_name_is_in_the_schema():
    keys = config.documented_keys()
    named = set()
    for span in spans(docs()):
        first = span.split()[0].rstrip(":,")
        if re.fullmatch(rf"(?:{'|'.join(SECTIONS)})\.[a-z_]+", first) and not first.endswith(FILES):
            named.add(first)
    assert len(named) > 8
    assert sorted(named - keys.keys()) == []


@pytest.mark.parametrize("block", code_blocks(docs(), "yaml"), ids=lambda b: b.split("\n")[0])
def test_every_yaml_example_in_the_docs_is_a_valid_config(block):
    config.from_mapping(yaml.safe_load(block), "the docs")


def config_reference() -> dict[str, str]:
    """The guide's config reference: key -> its default as the table shows it."""
    section = GUIDE.read_text().split("## Configuration: every key", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", section, re.M))


def test_the_config_reference_lists_every_key_with_its_default():
    reference = config_reference()
    keys = config.documented_keys()
    assert sorted(reference) == sorted(keys)
    wrong = {
        key: (shown, keys[key])
        for key, shown in reference.items()
        if yaml.safe_load(shown) != (list(keys[key]) if isinstance(keys[key], tuple) else keys[key])
    }
    assert wrong == {}, "key: (the guide's default, the code's)"
