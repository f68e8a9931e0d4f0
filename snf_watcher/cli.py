"""snf-watcher: the operator's command.

Without a subcommand it is the cron pass (watcher.py): restart crashed VMs
their owners want running, then deliver the outbox. Subcommands: `status`,
`pause` / `resume`, `reset` (the watcher's state), `outbox` (what waits for
the database), `deliver` (drain it into Synnefo's database now),
`dead-letters` / `requeue` (messages the database refused), `check-config`
(try what the config names), and
`install-hooks` / `remove-hooks` (the Ganeti hook links for a pip install;
the Debian package ships the same layout).
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

from snf_watcher import (
    DEFAULT_CONFIG,
    __version__,
    checkconfig,
    config,
    config_path,
    delivery,
    hooks,
    lockfile,
    logs,
    pause,
    report,
    restart,
    spool,
    state,
    watcher,
)
from snf_watcher.messages import describe
from snf_watcher.outbox import Outbox, OutboxError
from snf_watcher.syncdb import DatabaseDown

FIX_HELP = {
    "stale": "mark rows without an instance DESTROYED (seen on two passes)",
    "orphan": "remove instances without a live row through RAPI (seen on two passes)",
    "operstate": "set operstate to what Ganeti runs",
    "flavor": "move VMs to the flavor their instance has",
    "nics": "make NIC rows and addresses match Ganeti's NICs",
    "build": "end BUILD for VMs whose create job ended or vanished",
    "task": "clear tasks whose job ended or vanished",
    "network-stale": "mark backend networks DELETED whose network is destroyed and gone from Ganeti",
    "network-missing": "create wanted networks Ganeti lacks, connected to every node group",
    "network-orphan": "disconnect and remove Ganeti networks without a live row (seen on two passes)",
    "network-groups": "connect networks to the node groups they miss",
    "network-unsynced": "mark backend networks ACTIVE that Ganeti has connected everywhere",
    "pool": "rebuild IP pool maps from the addresses in use and Ganeti's reservations",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snf-watcher", description="Keep Synnefo's database in step with Ganeti."
    )
    p.add_argument("--config", help=f"config file (default: $SNF_WATCHER_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--dry-run", action="store_true", help="the pass decides and reports, changes nothing")
    p.add_argument("--json", action="store_true", help="the pass's report as one JSON object")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", help="none: one watcher pass")

    st = sub.add_parser("status", help="each instance with a restart record: attempts, last job, gave up")
    st.add_argument("--json", action="store_true", help="one JSON object per record")

    pa = sub.add_parser("pause", help="stop passes from acting until a time, or until resumed")
    pa.add_argument("--for", dest="duration", help="how long, e.g. 30m, 2h, 1d (default: until resumed)")
    pa.add_argument("--reason", required=True, help="why, shown by every pass while paused")
    sub.add_parser("resume", help="end a pause made by `snf-watcher pause`")
    rc = sub.add_parser(
        "reconcile", help="find differences between Synnefo's database and Ganeti (and fix them with --fix-*)"
    )
    rc.add_argument("--all", action="store_true", help="check every VM now, not this pass's staggered share")
    rc.add_argument("--fix-all", action="store_true", help="fix every kind of drift found")
    for kind in config.RECONCILE_KINDS:
        rc.add_argument(f"--fix-{kind}", dest="fix", action="append_const", const=kind, help=FIX_HELP[kind])
    rc.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    rc.add_argument("--json", action="store_true", help="the report as one JSON object")
    rs = sub.add_parser("reset", help="forget an instance's restart record: a fresh budget")
    rs.add_argument("instance", help="instance name or UUID")

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

    c = sub.add_parser(
        "check-config",
        help="try everything the config names (Ganeti's files, directories, secrets, database, RAPI) "
        "and say what is wrong",
    )
    c.add_argument("--json", action="store_true", help="one JSON object per check")

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
        if args.command is None:
            return run_pass(cfg, args.dry_run, args.json, args.debug)
        if args.command == "reconcile":
            fix = frozenset(config.RECONCILE_KINDS if args.fix_all else args.fix or ())
            duties = watcher.Duties(restart=False, fix=fix, check_all=args.all)
            return run_pass(cfg, args.dry_run, args.json, args.debug, duties)
        if args.command == "check-config":
            return check_config(cfg, args.json)
        if args.command == "status":
            return show_status(cfg, args.json)
        if args.command == "pause":
            return pause_passes(cfg, args.duration, args.reason)
        if args.command == "resume":
            return resume_passes(cfg)
        if args.command == "reset":
            return reset_instance(cfg, args.instance)
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


def run_pass(
    cfg: config.Config, dry_run: bool, as_json: bool, debug: bool, duties: watcher.Duties = watcher.CRON_PASS
) -> int:
    """One watcher pass; the exit code is for monitoring (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""
    logs.setup(cfg.logging, "snf-watcher", debug)
    r = watcher.run(cfg, dry_run, duties=duties)
    print(json.dumps(report.as_json(r), sort_keys=True) if as_json else report.text(r))
    return r.exit_code


def check_config(cfg: config.Config, as_json: bool) -> int:
    """Exit 0 when all is well, 1 with warnings, 2 when something will fail (3: the config itself)."""
    checks = checkconfig.run(cfg)
    for c in checks:
        print(json.dumps(dataclasses.asdict(c) | {"level": report.LEVELS[c.level]}) if as_json else c.line())
    level = checkconfig.worst(checks)
    if not as_json:
        problems = sum(c.level != report.OK for c in checks)
        print(f"{cfg.source}: {report.LEVELS[level]}, {problems} problems")
    return level


def show_status(cfg: config.Config, as_json: bool) -> int:
    loaded, problems = state.load(cfg.watcher.state_file)
    for p in problems:
        print(f"snf-watcher: {p}", file=sys.stderr)
    rows = report.status(loaded, watcher.policy(cfg), time.time())
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    print(f"{len(rows)} instances with a restart record in {cfg.watcher.state_file}")
    for row in rows:
        print(report.status_line(row))
    return 0


def pause_passes(cfg: config.Config, duration: str | None, reason: str) -> int:
    now = time.time()
    try:
        until = None if duration is None else now + pause.parse_duration(duration)
    except ValueError as e:
        print(f"snf-watcher: --for: {e}", file=sys.stderr)
        return 2
    p = pause.write(cfg.watcher.pause_file, until, reason, now)
    end = "until `snf-watcher resume`" if p.until is None else f"until {restart.utc(p.until)}"
    print(f"watcher paused {end}: {reason}")
    return 0


def resume_passes(cfg: config.Config) -> int:
    removed = pause.remove(cfg.watcher.pause_file)
    print("watcher resumed" if removed else f"the watcher was not paused by {cfg.watcher.pause_file}")
    left, _ = pause.read(cfg.watcher.pause_file, cfg.watcher.ganeti_pause_file, time.time())
    if left is not None:
        print(f"snf-watcher: still paused by {left.source} ({left.reason})", file=sys.stderr)
        return 1
    return 0


def reset_instance(cfg: config.Config, instance: str) -> int:
    """Forget a record under the state lock, so no pass overwrites the change."""
    try:
        lock = state.lock(cfg.watcher.state_file)
    except lockfile.LockBusy as e:
        print(f"snf-watcher: a pass (pid {e.holder}) holds the state file; try again", file=sys.stderr)
        return 1
    try:
        loaded, _ = state.load(cfg.watcher.state_file)
        new, record = restart.reset(loaded, instance)
        if record is None:
            print(f"snf-watcher: no restart record for {instance!r}", file=sys.stderr)
            return 1
        state.save(cfg.watcher.state_file, new)
    finally:
        os.close(lock)
    print(f"reset {record.name}: {record.attempts} attempts forgotten; the next pass may restart it")
    return 0


def deliver(cfg: config.Config, as_json: bool) -> int:
    """Move the spool into the outbox and deliver everything pending; 1 if the database is down."""
    if cfg.database.dsn is None:
        print(
            f"snf-watcher: {cfg.source}: database.dsn is not set; nothing can be delivered", file=sys.stderr
        )
        return config.EXIT_CONFIG
    logs.setup(cfg.logging, "snf-watcher", False)
    try:
        done = delivery.flush(cfg)
    except delivery.DeliveryBusy as e:
        print(f"snf-watcher: {e}; it delivers continuously, nothing to do", file=sys.stderr)
        return 0
    except DatabaseDown as e:
        print(f"snf-watcher: {e}", file=sys.stderr)
        return 1
    totals = done.totals
    if as_json:
        out = {
            **dataclasses.asdict(totals),
            "seconds": round(done.seconds, 3),
            "pending": done.pending,
            "dead_letters": done.dead_letters,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(
            f"delivered {totals.delivered}, skipped {totals.skipped}, dead-lettered {totals.dead} "
            f"in {done.seconds:.2f}s; {done.pending} pending, {done.dead_letters} dead letters in all"
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
