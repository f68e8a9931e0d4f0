"""snf-watcher: the operator's command.

Subcommands so far: `outbox` (what waits for the database), `deliver` (drain
it into Synnefo's database now), `dead-letters` / `requeue` (messages the
database refused), and `install-hooks` / `remove-hooks` (the Ganeti hook
links for a pip install; the Debian package ships the same layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any

from snf_watcher import DEFAULT_CONFIG, __version__, config, config_path, delivery, hooks, logs, spool
from snf_watcher.messages import describe
from snf_watcher.outbox import Outbox, OutboxError
from snf_watcher.syncdb import DatabaseDown, safe_dsn


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

    d = sub.add_parser("deliver", help="deliver the outbox to Synnefo's database now, then exit")
    d.add_argument("--json", action="store_true", help="print the totals as one JSON object")

    dl = sub.add_parser("dead-letters", help="list the messages the database can never apply, with why")
    dl.add_argument("--json", action="store_true", help="one JSON object per line")
    dl.add_argument("--limit", type=int, default=50, help="show at most this many (0: all; default 50)")

    r = sub.add_parser("requeue", help="put dead letters back into the outbox (after fixing the cause)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "ids", nargs="*", type=int, default=[], metavar="ID", help="dead letter ids to requeue"
    )
    which.add_argument("--all", action="store_true", help="requeue every dead letter")

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
        if args.command == "deliver":
            return deliver(cfg, args.json)
        if args.command == "dead-letters":
            return show_dead_letters(cfg, args.json, args.limit)
        if args.command == "requeue":
            return requeue(cfg, None if args.all else args.ids)
        return show_outbox(cfg, args.json, args.limit)
    except OutboxError as e:
        print(f"snf-watcher: {e}", file=sys.stderr)
        return 2


def deliver(cfg: config.Config, as_json: bool) -> int:
    """Move the spool into the outbox and deliver everything pending; 1 if the database is down."""
    if cfg.database.dsn is None:
        print(
            f"snf-watcher: {cfg.source}: database.dsn is not set; nothing can be delivered", file=sys.stderr
        )
        return config.EXIT_CONFIG
    logs.setup(cfg.logging, "snf-watcher", False)
    try:
        lock = delivery.take_delivery_lock(cfg.outbox.path)
    except delivery.DeliveryBusy as e:
        print(f"snf-watcher: {e}; it delivers continuously, nothing to do", file=sys.stderr)
        return 0
    box = Outbox(cfg.outbox.path)
    worker = delivery.Delivery(cfg, box)
    try:
        box.ingest_spool(cfg.outbox.spool_dir)
        t0 = time.monotonic()
        try:
            totals = worker.drain()
        except DatabaseDown as e:
            print(f"snf-watcher: database {safe_dsn(cfg.database.dsn)}: {e}", file=sys.stderr)
            print(f"snf-watcher: {box.pending_count()} messages wait in the outbox", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - t0
        pending, dead = box.pending_count(), box.dead_count()
    finally:
        worker.close()
        box.close()
        os.close(lock)
    if as_json:
        out = {
            **dataclasses.asdict(totals),
            "seconds": round(elapsed, 3),
            "pending": pending,
            "dead_letters": dead,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(
            f"delivered {totals.delivered}, skipped {totals.skipped}, dead-lettered {totals.dead} "
            f"in {elapsed:.2f}s; {pending} pending, {dead} dead letters in all"
        )
    return 0


def show_dead_letters(cfg: config.Config, as_json: bool, limit: int) -> int:
    box = Outbox(cfg.outbox.path)
    try:
        letters, total = box.dead_letters(limit or None), box.dead_count()
    finally:
        box.close()
    if as_json:
        for d in letters:
            print(
                json.dumps(
                    {"id": d.entry.seq, "error": d.error, "failed": d.failed, "message": d.entry.message}
                )
            )
        return 0
    print(
        f"{total} dead letters in {cfg.outbox.path}"
        + (" (requeue them with `snf-watcher requeue`)" if total else "")
    )
    for d in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.failed))
        print(f"  {d.entry.seq:>6}  {when}  {describe(d.entry.message)}\n          {d.error}")
    if limit and total > len(letters):
        print(f"  ... {total - len(letters)} more (--limit 0 shows all)")
    return 0


def requeue(cfg: config.Config, ids: list[int] | None) -> int:
    box = Outbox(cfg.outbox.path)
    try:
        known = {d.entry.seq for d in box.dead_letters()}
        missing = sorted(set(ids or []) - known)
        moved = box.requeue(None if ids is None else [i for i in ids if i in known])
    finally:
        box.close()
    print(f"requeued {moved} dead letters; they are delivered next")
    if missing:
        print(f"snf-watcher: no dead letter with id {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    return 0


def show_outbox(cfg: config.Config, as_json: bool, limit: int) -> int:
    """Print the spool's files and the outbox's rows, oldest first; change nothing."""
    spooled = _spooled(cfg.outbox.spool_dir)
    box = Outbox(cfg.outbox.path)
    try:
        rows = box.pending(limit or None)
        total, hwm, counters = box.pending_count(), box.high_water_mark(), box.counters()
        dead = box.dead_count()
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
    print(f"outbox {cfg.outbox.path}: {total} pending, {dead} dead letters; job high-water mark: {hwm}")
    print(f"spool {cfg.outbox.spool_dir}: {len(spooled)} not yet moved into the outbox")
    for name, value in counters.items():
        print(f"  {name}: {value}")
    for name, message in spooled:
        print(f"  spool  {name}  {describe(message)}")
    for e in rows:
        print(f"  {e.seq:>6}  {e.key}  {describe(e.message)}")
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
