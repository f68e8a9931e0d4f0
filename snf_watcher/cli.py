"""snf-watcher: the operator's command.

Subcommands so far: `outbox` (what waits for the database) and
`install-hooks` / `remove-hooks` (the Ganeti hook links for a pip install;
the Debian package ships the same layout from hooks.d/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from snf_watcher import DEFAULT_CONFIG, __version__, config, config_path, hooks, spool
from snf_watcher.outbox import Outbox, OutboxError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snf-watcher", description="Keep Synnefo's database in step with Ganeti."
    )
    p.add_argument("--config", help=f"config file (default: $SNF_WATCHER_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    o = sub.add_parser("outbox", help="list the messages waiting for the database")
    o.add_argument("--json", action="store_true", help="one JSON object per line")
    o.add_argument("--limit", type=int, default=50, help="show at most this many (0: all; default 50)")

    for name, text in (
        ("install-hooks", "link snf-ganeti-hook into Ganeti's hook directories"),
        ("remove-hooks", "remove the links made by install-hooks"),
    ):
        h = sub.add_parser(name, help=text)
        h.add_argument(
            "--hooks-dir",
            default=hooks.HOOKS_DIR,
            help=f"Ganeti's hooks directory (default {hooks.HOOKS_DIR})",
        )
        if name == "install-hooks":
            h.add_argument(
                "--executable", help="the hook program (default: snf-ganeti-hook beside this command)"
            )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "install-hooks":
        return install_hooks(args.hooks_dir, args.executable or _sibling("snf-ganeti-hook"))
    if args.command == "remove-hooks":
        return remove_hooks(args.hooks_dir)
    try:
        cfg = config.load(config_path(args.config))
    except config.ConfigError as e:
        print(f"snf-watcher: {e}", file=sys.stderr)
        return config.EXIT_CONFIG
    try:
        return show_outbox(cfg, args.json, args.limit)
    except OutboxError as e:
        print(f"snf-watcher: {e}", file=sys.stderr)
        return 2


def show_outbox(cfg: config.Config, as_json: bool, limit: int) -> int:
    """Print the spool's files and the outbox's rows, oldest first; change nothing."""
    spooled = _spooled(cfg.outbox.spool_dir)
    box = Outbox(cfg.outbox.path)
    try:
        rows = box.pending(limit or None)
        total, hwm, counters = box.pending_count(), box.high_water_mark(), box.counters()
    finally:
        box.close()
    if as_json:
        for name, message in spooled:
            print(json.dumps({"where": "spool", "id": name, "message": message}, sort_keys=True))
        for e in rows:
            print(
                json.dumps(
                    {"where": "outbox", "id": e.seq, "key": e.key, "message": e.message}, sort_keys=True
                )
            )
        return 0
    print(f"outbox {cfg.outbox.path}: {total} pending; job high-water mark: {hwm}")
    print(f"spool {cfg.outbox.spool_dir}: {len(spooled)} not yet moved into the outbox")
    for name, value in counters.items():
        print(f"  {name}: {value}")
    for name, message in spooled:
        print(f"  spool  {name}  {_summary(message)}")
    for e in rows:
        print(f"  {e.seq:>6}  {e.key}  {_summary(e.message)}")
    if limit and total > len(rows):
        print(f"  ... {total - len(rows)} more (--limit 0 shows all)")
    return 0


def _spooled(spool_dir: str) -> list[tuple[str, Any]]:
    out = []
    for name in spool.names(spool_dir):
        try:
            out.append((name, spool.read(os.path.join(spool_dir, name))))
        except (OSError, ValueError):  # taken by the daemon meanwhile, or set aside by it later
            continue
    return out


def _summary(m: dict[str, Any]) -> str:
    subject = m.get("instance") or m.get("network") or "?"
    kind = m.get("type", "?")
    if kind in ("ganeti-op-status", "ganeti-network-status"):
        return f"{kind} {subject} job {m.get('jobId')} {m.get('operation')} {m.get('status')}"
    if kind == "ganeti-net-status":
        return f"{kind} {subject} {len(m.get('nics') or [])} NICs ({m.get('hook')})"
    return f"{kind} {subject}"


def _sibling(name: str) -> str:
    """The named command installed beside this one, else on PATH."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)
    return here if os.access(here, os.X_OK) else (shutil.which(name) or name)


def install_hooks(hooks_dir: str, executable: str) -> int:
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        print(f"snf-watcher: {executable}: not an executable file", file=sys.stderr)
        return 2
    for link in hooks.install(hooks_dir, executable):
        print(f"{link} -> {os.path.abspath(executable)}")
    return 0


def remove_hooks(hooks_dir: str) -> int:
    for link in hooks.remove(hooks_dir):
        print(f"removed {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
