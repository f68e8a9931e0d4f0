#!/usr/bin/python3
"""Write the commands' man pages from their argument parsers: `manpages.py OUTDIR`.

The options, subcommands and help texts come from the same argparse parsers the
commands use, so a man page cannot describe an option that does not exist;
the few sections a parser cannot know (files, exit status) are below.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ganeti_hooks import eventd, hook, progress
from snf_watcher import DEFAULT_CONFIG, __version__, cli

# dpkg-buildpackage sets SOURCE_DATE_EPOCH from debian/changelog: the same pages on every build.
DATE = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
CONFIG_FILE = ("FILES", [(DEFAULT_CONFIG, "The configuration, every key documented in it.")])
SEE_ALSO = "snf-watcher(8), snf-ganeti-eventd(8), snf-ganeti-hook(8), snf-progress-monitor(8)"

PAGES = {
    "snf-watcher": (
        cli.build_parser,
        [
            (
                "DESCRIPTION",
                "Without a command, one watcher pass, as cron runs it every 5 minutes on every node "
                "(/etc/cron.d/snf-watcher); it acts only on the master. It restarts crashed VMs their "
                "owners want running, within the retry budget of its state file, reconciles Synnefo's "
                "database with Ganeti, fixing the kinds of drift watcher.reconcile_fix lists, and "
                "delivers the outbox. The report's first line is `snf-watcher LEVEL: summary`.",
            ),
            (
                "EXIT STATUS",
                "As Nagios plugins: 0 OK, 1 WARNING (drift found, a deferred restart), 2 CRITICAL (RAPI "
                "or the database unreachable, a fix failed, an instance given up), 3 UNKNOWN (no "
                "database configured, or a bad config). check-config: the worst level of its checks.",
            ),
            (
                "FILES",
                [
                    (DEFAULT_CONFIG, "The configuration, every key documented in it."),
                    ("/etc/cron.d/snf-watcher", "The pass every 5 minutes."),
                    ("/var/lib/snf-watcher/state.json", "Restart and reconciliation records (mode 0600)."),
                    ("/var/lib/snf-watcher/outbox.sqlite", "Messages waiting for the database."),
                    ("/var/lib/prometheus/node-exporter/snf_watcher.prom", "Metrics of the last pass."),
                ],
            ),
        ],
    ),
    "snf-ganeti-eventd": (
        eventd.build_parser,
        [
            (
                "DESCRIPTION",
                "Run by systemd (snf-ganeti-eventd.service) on every master candidate; it produces "
                "only while its node is the master and delivers the outbox into Synnefo's database "
                "when database.dsn is set.",
            ),
            ("EXIT STATUS", "0 after SIGTERM, 1 on a fatal error (systemd restarts it), 3 bad config."),
            CONFIG_FILE,
        ],
    ),
    "snf-ganeti-hook": (
        hook.build_parser,
        [
            (
                "DESCRIPTION",
                "Ganeti runs it, without arguments, after instance-add, -start, -reboot, -modify, "
                "-migrate, -failover and -remove, from /etc/ganeti/hooks/<hook-path>-post.d/"
                "50-snf-ganeti-hook. It writes one message with the instance's NICs into the spool.",
            ),
            ("EXIT STATUS", "Always 0: a hook must never fail a Ganeti operation; errors go to syslog."),
            CONFIG_FILE,
        ],
    ),
    "snf-progress-monitor": (
        progress.build_parser,
        [
            (
                "DESCRIPTION",
                "snf-image runs it with PROGRESS_MONITOR=snf-progress-monitor in /etc/default/snf-image.",
            ),
            ("EXIT STATUS", "0, or 3 for a bad config."),
            CONFIG_FILE,
        ],
    ),
}


def escape(text: str) -> str:
    """Roff-safe text: backslashes, and a leading dot or quote would read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.splitlines())


def summary(parser: argparse.ArgumentParser) -> str:
    """The description's first sentence: whatis(1) and apropos(1) show this line."""
    return (parser.description or "").split(". ")[0].rstrip(".")


def usage(parser: argparse.ArgumentParser) -> str:
    """One line: argparse wraps usage for the terminal, and roff fills lines itself."""
    return escape(" ".join(parser.format_usage().removeprefix("usage: ").split()))


def options(parser: argparse.ArgumentParser, with_help: bool = True) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction) and not with_help:
            continue
        metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
        names = ", ".join(action.option_strings) or (action.metavar or action.dest)
        out += [".TP", f"\\fB{escape(names)}\\fR{escape(metavar)}", escape(action.help or "")]
    return out


def commands(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            out += [".SS " + escape(name), escape(helps.get(name) or ""), ".PP", usage(sub)]
            out += options(sub, with_help=False)
    return out


def page(name: str, build: Callable[[], argparse.ArgumentParser], extra: list[tuple[str, Any]]) -> str:
    parser = build()
    lines = [
        f'.TH {name.upper()} 8 "{DATE}" "snf-watcher {__version__}" "System Administration"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary(parser))}",
        ".SH SYNOPSIS",
        usage(parser),
    ]
    sections = dict(extra)
    lines += [".SH DESCRIPTION", escape(parser.description or ""), ".PP", escape(sections.pop("DESCRIPTION"))]
    lines += [".SH OPTIONS", *options(parser)]
    subcommands = commands(parser)
    if subcommands:
        lines += [".SH COMMANDS", *subcommands]
    for title, body in sections.items():
        lines.append(".SH " + title)
        if isinstance(body, str):
            lines.append(escape(body))
        else:  # (term, text) pairs
            for term, text in body:
                lines += [".TP", f"\\fB{escape(term)}\\fR", escape(text)]
    lines += [".SH SEE ALSO", escape(SEE_ALSO), ""]
    return "\n".join(lines)


def main(outdir: str) -> None:
    Path(outdir).mkdir(parents=True, exist_ok=True)
    for name, (build, extra) in PAGES.items():
        Path(outdir, f"{name}.8").write_text(page(name, build, extra))


if __name__ == "__main__":
    main(sys.argv[1])
