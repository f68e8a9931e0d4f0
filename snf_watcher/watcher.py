"""One cron pass of the watcher: the imperative shell around `restart.decide` and `reconcile`.

The order of the steps is the design: nothing is decided before both
snapshots are taken (Ganeti's first), nothing is changed when RAPI does not
answer, no job is waited for while the state lock is held (a startup job's
outcome is read on the next pass), reconciliation's fixes go through the
apply engine that events go through, and the state is saved before the
outbox is flushed, so a crash in between costs at most an unrecorded
diagnostic, never a second restart.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from snf_watcher import (
    atomicfile,
    delivery,
    lockfile,
    messages,
    pause,
    reconcile,
    report,
    restart,
    snapshot,
    spool,
    ssconf,
    state,
)
from snf_watcher.config import Config
from snf_watcher.events import NETWORK_PREFIX, id_from_name, parse
from snf_watcher.rapi import Rapi, RapiError
from snf_watcher.report import CRITICAL, OK, UNKNOWN, WARNING, Report
from snf_watcher.syncdb import Database, DatabaseDown

log = logging.getLogger("snf-watcher")


FIX_CONNECTIONS = 2  # database connections a big reconciliation pass applies its fixes on
# How each kind of drift is fixed: by a correction through the apply engine, by Ganeti jobs
# submitted through RAPI, or (pools) by rebuilding the pool row.
CORRECTED = frozenset(
    {"stale", "operstate", "flavor", "nics", "build", "task", "network-stale", "network-unsynced"}
)
GANETI_FIXES = frozenset({"orphan", "network-missing", "network-groups", "network-orphan"})
LOG_LEVEL = {OK: logging.INFO, WARNING: logging.WARNING, CRITICAL: logging.ERROR, UNKNOWN: logging.ERROR}


def policy(cfg: Config) -> restart.Policy:
    w = cfg.watcher
    return restart.Policy(w.max_tries, w.retry_expiration, w.max_restarts_per_pass, cfg.instance_prefix)


@dataclass(frozen=True)
class Duties:
    """What a pass does: cron's pass restarts and reconciles; `snf-watcher reconcile` only reconciles."""

    restart: bool = True
    fix: frozenset[str] | None = None  # kinds of drift fixed; None: the config's watcher.reconcile_fix
    check_all: bool = False  # every VM now, not this pass's staggered share


CRON_PASS = Duties()


def run(
    cfg: Config, dry_run: bool = False, clock: Callable[[], float] = time.time, duties: Duties = CRON_PASS
) -> Report:
    """One pass; never raises for what it finds: the report says what happened and how bad it is."""
    r = Report(started=clock(), dry_run=dry_run)
    try:
        _run(cfg, r, clock, duties)
    finally:
        r.finished = clock()
        for p in r.problems:  # also under cron, which throws the printed report away
            log.warning("problem: %s", p)
        if r.headline:
            log.log(LOG_LEVEL[r.exit_code], "%s", r.headline)
        if not dry_run and cfg.watcher.metrics_file:
            _write_metrics(cfg, r)
    return r


def _run(cfg: Config, r: Report, clock: Callable[[], float], duties: Duties) -> None:
    w = cfg.watcher
    paused, problems = pause.read(w.pause_file, w.ganeti_pause_file, r.started)
    _problems(r, problems, WARNING)
    if paused is not None:
        until = "until resumed" if paused.until is None else f"until {report.iso(paused.until)}"
        r.headline = f"paused {until} ({paused.source}): {paused.reason or 'no reason given'}"
        return
    master = ssconf.read(cfg.ganeti.ssconf_dir, "master_node")
    if not ssconf.is_master(master, cfg.ganeti.node_name):
        # Every master candidate has the cron entry; only the master's pass acts.
        where = f"{master} is" if master else f"no ssconf_master_node in {cfg.ganeti.ssconf_dir}"
        r.headline = f"this node is not the master ({where}): nothing to do"
        return
    if cfg.database.dsn is None:
        r.headline = f"{cfg.source}: database.dsn is not set: cannot tell which VMs their owners want running"
        r.worst(UNKNOWN)
        return
    lock = None
    if not r.dry_run:
        try:
            lock = state.lock(w.state_file)
        except lockfile.LockBusy as e:
            _lock_busy(cfg, r, e)
            return
    try:
        _pass(cfg, r, clock, duties)
    finally:
        if lock is not None:
            os.close(lock)


def _lock_busy(cfg: Config, r: Report, e: lockfile.LockBusy) -> None:
    r.lock_busy = True
    held = r.started - e.since if e.since is not None else None
    since = f" since {report.iso(e.since)} ({held:.0f}s)" if held is not None else ""
    r.headline = f"another pass (pid {e.holder}) holds {cfg.watcher.state_file}.lock{since}; nothing done"
    limit = cfg.watcher.interval * cfg.watcher.lock_warning_intervals
    if held is not None and held > limit:
        r.headline += f"; held longer than {limit:.0f}s: is it stuck?"
        r.worst(WARNING)


def _pass(cfg: Config, r: Report, clock: Callable[[], float], duties: Duties) -> None:
    rapi = Rapi(cfg.rapi)
    db = Database(cfg.database)
    try:
        old, problems = state.load(cfg.watcher.state_file)
        _problems(r, problems, WARNING)
        try:
            version = rapi.version()
            ganeti = _ganeti(rapi, old)
        except (RapiError, snapshot.BadSnapshot) as e:
            r.headline = f"{e}; nothing changed"
            r.worst(CRITICAL)
            return
        finally:
            r.rapi_calls = rapi.calls
        log.debug("RAPI version %s answers", version)
        try:
            vms = db.vms()
        except DatabaseDown as e:
            r.headline = f"database: {e}; nothing changed"
            r.worst(CRITICAL)
            return
        r.statuses = dict(Counter(i.status for i in ganeti.instances))
        new = _restart(cfg, rapi, ganeti, vms, old, r, clock) if duties.restart else old
        fix = duties.fix if duties.fix is not None else frozenset(cfg.watcher.reconcile_fix)
        try:
            new = _reconcile(cfg, rapi, db, ganeti, vms, new, r, clock, fix, duties.check_all)
        except (RapiError, snapshot.BadSnapshot) as e:
            r.problems.append(f"reconciliation stopped: {e}")
            r.worst(CRITICAL)
        except DatabaseDown as e:
            r.problems.append(f"reconciliation stopped: database: {e}")
            r.worst(CRITICAL)
        r.rapi_calls = rapi.calls
        if not r.dry_run:
            state.save(cfg.watcher.state_file, new)
            _deliver(cfg, r)
    finally:
        rapi.close()
        db.close()


def _restart(
    cfg: Config,
    rapi: Rapi,
    ganeti: snapshot.Ganeti,
    vms: dict[int, snapshot.Vm],
    old: state.State,
    r: Report,
    clock: Callable[[], float],
) -> state.State:
    decision = restart.decide(ganeti, vms, old, policy(cfg), clock())
    r.verdicts, r.rebooted = list(decision.verdicts), list(decision.rebooted)
    for v in r.verdicts:
        r.worst(v.severity)
        if not v.restart or r.dry_run:  # a restart is logged with its job id once submitted
            log.log(LOG_LEVEL[v.severity], "%s [%s] %s", v.instance, v.rule, v.text)
    for node in r.rebooted:
        log.info("node %s rebooted since the last pass (boot id changed)", node)
    return decision.state if r.dry_run else _act(cfg, rapi, decision, old, r)


def _reconcile(
    cfg: Config,
    rapi: Rapi,
    db: Database,
    ganeti: snapshot.Ganeti,
    vms: dict[int, snapshot.Vm],
    st: state.State,
    r: Report,
    clock: Callable[[], float],
    fix: frozenset[str],
    check_all: bool,
) -> state.State:
    """This pass's share of the VMs (and every VM with an open finding), every network and IP
    pool of this backend, diffed and fixed."""
    w, prefix = cfg.watcher, cfg.instance_prefix
    named = (id_from_name(i.name, prefix) for i in ganeti.instances)
    ids = set(vms) | {i for i in named if i is not None}
    size = len(ids)
    if not check_all and w.reconcile_min > 0:
        size = math.ceil(len(ids) * w.interval / w.reconcile_min)
    chosen, cursor = reconcile.window(ids, st.cursor, size)
    checked = set(chosen) | {rec.vm_id for rec in st.findings.values() if rec.vm_id is not None}
    rows = db.reconcile_rows(None if checked >= ids else checked)  # all: cheaper by backend than by ids
    if rows is None:
        r.problems.append(f"backend {cfg.database.backend_id} is offline in db_backend: not reconciled")
        return st
    jobs = {**ganeti.jobs, **_job_statuses(rapi, reconcile.jobs_to_look_up(ganeti, rows.values()))}
    now = datetime.fromtimestamp(r.started, UTC)
    found = reconcile.diff(ganeti, rows, jobs, prefix, now, checked)
    ganeti = snapshot.with_networks(ganeti, rapi.networks(), rapi.groups())  # after the jobs, as instances
    in_ganeti = reconcile.networks_to_read(ganeti)
    networks = db.network_rows(in_ganeti)
    pools = db.pools(i for i, n in networks.items() if n.backend is not None and not n.backend.deleted)
    found += reconcile.network_diff(ganeti, networks, jobs, now) + reconcile.pool_diff(ganeti, pools)
    network_ids = networks.keys() | in_ganeti
    # Every network and pool is checked: one with an open finding that was not read is gone.
    gone = {s for s in map(reconcile.subject_of, st.findings) if not s.startswith("vm:")}
    subjects = (
        {f"vm:{i}" for i in checked}
        | {f"network:{i}" for i in network_ids}
        | {f"pool:{p.pool.id}" for p in pools}
        | gone
    )
    opts = reconcile.Options(fix, w.max_tries, w.retry_expiration, w.max_destructive_per_pass)
    outcomes, records = reconcile.decide(found, st.findings, subjects, opts, clock())
    r.checked, r.checked_networks, r.checked_pools = len(checked), len(network_ids), len(pools)
    fixes = [o for o in outcomes if o.action == "fix"] if not r.dry_run else []
    done = _fix_rows(cfg, db, [o for o in fixes if o.finding.kind in CORRECTED], r.started)
    done |= {o.finding.key: _ganeti_fix(rapi, o, r) for o in fixes if o.finding.kind in GANETI_FIXES}
    done |= {o.finding.key: _fix_pool(db, o) for o in fixes if o.finding.kind == "pool"}
    for o in outcomes:
        severity, text = done.get(o.finding.key, (o.severity, o.text))
        r.findings.append(report.finding(replace(o, text=text), severity))
        r.worst(severity)
        log.log(LOG_LEVEL[severity], "%s", report.finding_line(r.findings[-1]))
    return replace(st, findings=records, cursor=cursor)


def _fix_rows(
    cfg: Config, db: Database, fixes: list[reconcile.Outcome], started: float
) -> dict[str, tuple[int, str]]:
    """Corrections applied by the engine that applies events, in batches: finding key -> (level, text).

    No detour through the outbox: a correction lost to a crash is found again by
    the next pass, and the order keys (the pass's start on the master's clock)
    keep any newer event in front of it all the same. A big pass (thousands of
    drifted VMs) applies its batches on FIX_CONNECTIONS connections at once:
    the batches hold disjoint VMs, and one batch's Python work overlaps another's
    time in the server.
    """
    out: dict[str, tuple[int, str]] = {}
    by_event: dict[int, reconcile.Outcome] = {}
    events = []
    for o in sorted(fixes, key=lambda o: (o.finding.subject, o.finding.id)):
        ev = parse(correction_message(o.finding, started), cfg.instance_prefix)
        by_event[id(ev)] = o
        events.append(ev)
    size = max(1, cfg.database.batch_size)
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    if len(batches) < 2:
        results = [db.apply(b) for b in batches]
    else:
        extra = [Database(cfg.database) for _ in range(FIX_CONNECTIONS - 1)]
        pool = [db, *extra]
        free: queue.Queue[Database] = queue.Queue()
        for conn in pool:
            free.put(conn)

        def apply_batch(batch: list[Any]) -> Any:
            conn = free.get()
            try:
                return conn.apply(batch)
            finally:
                free.put(conn)

        try:
            with ThreadPoolExecutor(len(pool)) as workers:
                results = list(workers.map(apply_batch, batches))
        finally:
            for conn in extra:
                conn.close()
    for result in results:
        for ev in result.applied:
            o = by_event[id(ev)]
            out[o.finding.key] = (o.severity, o.text)
        for ev, why in result.skipped:
            out[by_event[id(ev)].finding.key] = (WARNING, f"not fixed: {why}")
        for ev, why in result.dead:
            out[by_event[id(ev)].finding.key] = (CRITICAL, f"fix failed: {why}")
    return out


def correction_message(f: reconcile.Finding, started: float) -> dict[str, object]:
    """The finding's fix as a message, stamped with the pass's start on the master's clock."""
    if f.subject.startswith("network:"):
        return messages.network_correction(
            network=f.name,
            kind=f.kind,
            event_time=messages.split_time(started),
            expect_updated=f.updated.isoformat() if f.updated else None,
        )
    nics = None
    if f.nics is not None:
        nics = [
            {
                "name": n.name,
                "network": f"{NETWORK_PREFIX}{n.network_id}" if n.network_id else None,
                "mac": n.mac,
                "ip": n.ipv4,
            }
            for n in f.nics
        ]
    return messages.correction(
        instance=f.name,
        kind=f.kind,
        event_time=messages.split_time(started),
        expect_updated=f.updated.isoformat() if f.updated else None,
        operstate=f.operstate,
        flavor=list(f.flavor) if f.flavor else None,
        nics=nics,
        job_id=f.job_id,
        diagnostic=f"Reconciled by snf-watcher: {f.kind}: Ganeti says {f.ganeti}, "
        f"the database said {f.database}; {f.fix}",
    )


def _ganeti_fix(rapi: Rapi, o: reconcile.Outcome, r: Report) -> tuple[int, str]:
    """Submit the jobs that fix a finding in Ganeti, never waiting for them: the next pass sees
    whether they worked. A job that needs another's success says so (Ganeti's `depends`)."""
    f = o.finding
    reason = f"snf-watcher: reconcile: {f.kind} ({f.database})"
    jobs: list[int] = []
    try:
        if f.kind == "orphan":
            jobs.append(rapi.remove(f.name, reason=reason))
        elif f.kind == "network-orphan":
            for group in f.groups:
                jobs.append(rapi.disconnect_network(f.name, group, reason))
            jobs.append(rapi.remove_network(f.name, reason, after=tuple(jobs)))
        else:  # network-missing, network-groups: the network is wanted, connected everywhere
            net = f.network
            assert net is not None and net.mode and net.link
            after = None
            if f.kind == "network-missing":
                after = rapi.create_network(reconcile.create_network_body(f.name, net), reason)
                jobs.append(after)
            check = reconcile.conflicts_check(net)
            for group in f.groups:  # one by one: a failure still lists the jobs submitted before it
                job = rapi.connect_network(f.name, group, net.mode, net.link, check, reason, after=after)
                jobs.append(job)
    except RapiError as e:
        submitted = f" (submitted before it: jobs {', '.join(map(str, jobs))})" if jobs else ""
        return CRITICAL, f"fix failed: {e}{submitted}"
    if jobs:
        r.jobs[f.name] = jobs[-1]
    return o.severity, f"{o.text}: Ganeti jobs {', '.join(map(str, jobs)) or 'none needed'}"


def _fix_pool(db: Database, o: reconcile.Outcome) -> tuple[int, str]:
    f = o.finding
    assert f.pool is not None
    try:
        why = db.fix_pool(f.pool, f.reserved)
    except DatabaseDown as e:
        return CRITICAL, f"fix failed: database: {e}"
    return (WARNING, f"not fixed: {why}") if why else (o.severity, o.text)


def _ganeti(rapi: Rapi, old: state.State) -> snapshot.Ganeti:
    """Jobs first, then instances and nodes; then the outcome of last pass's jobs no longer live."""
    jobs = rapi.jobs()
    g = snapshot.ganeti(rapi.instances(), rapi.nodes(), jobs)
    asked = {
        rec.last_job
        for rec in old.instances.values()
        if rec.last_job is not None
        and rec.last_job_status not in snapshot.ENDED
        and rec.last_job not in g.jobs
    }
    found = _job_statuses(rapi, asked)
    return replace(g, jobs={**g.jobs, **found}) if found else g


def _job_statuses(rapi: Rapi, job_ids: set[int]) -> dict[int, str]:
    """Each job's status, looked up by id (archived jobs too); "gone" for one Ganeti never had."""
    out = {}
    for job_id in sorted(job_ids):
        body = rapi.job(job_id)
        out[job_id] = "gone" if body is None else str(body.get("status"))
    return out


def _act(cfg: Config, rapi: Rapi, decision: restart.Decision, old: state.State, r: Report) -> state.State:
    """Submit the startup jobs (never waiting for them) and queue a diagnostic per VM acted on.

    After a submission fails, RAPI is in trouble: the remaining restarts wait
    for the next pass, and no attempt that was not made is charged.
    """
    records = dict(decision.state.instances)
    failed = False
    for v in decision.restarts:
        if not failed:
            try:
                job = rapi.startup(v.instance, reason=f"snf-watcher: {v.rule}: {v.text}")
            except RapiError as e:
                failed = True
                r.problems.append(f"{v.instance}: startup not submitted: {e}; no more restarts this pass")
                r.worst(CRITICAL)
            else:
                r.jobs[v.instance] = job
                records[v.uuid] = replace(records[v.uuid], last_job=job)
                log.info("%s: %s: %s -> startup job %d", v.instance, v.rule, v.text, job)
                text = f"Restarted by snf-watcher: {v.text}; Ganeti job {job}"
                _diagnose(cfg, v.instance, v.vm_id, "INFO", text, r.started)
                continue
        if v.uuid in old.instances:
            records[v.uuid] = old.instances[v.uuid]
        else:
            records.pop(v.uuid, None)
    for v in decision.gave_up_now:
        log.error("%s: %s", v.instance, v.text)
        text = f"snf-watcher gave up restarting it: {v.text}"
        _diagnose(cfg, v.instance, v.vm_id, "ERROR", text, r.started)
    return replace(decision.state, instances=records)


def _diagnose(cfg: Config, instance: str, vm_id: int | None, level: str, text: str, now: float) -> None:
    """A diagnostic row for the VM, through the outbox like every other write to Synnefo."""
    if vm_id is None:
        return
    message = messages.watcher_diagnostic(
        instance=instance, level=level, message=text[:255], details=text, event_time=messages.split_time(now)
    )
    spool.write(cfg.outbox.spool_dir, message)


def _deliver(cfg: Config, r: Report) -> None:
    try:
        done = delivery.flush(cfg)
    except delivery.DeliveryBusy:
        return  # snf-ganeti-eventd delivers continuously: it picks the diagnostics up
    except DatabaseDown as e:
        r.problems.append(str(e))
        r.worst(WARNING)
        return
    r.delivered = done.totals.delivered


def _problems(r: Report, problems: list[str], level: int) -> None:
    for p in problems:
        r.problems.append(p)
        r.worst(level)


def _write_metrics(cfg: Config, r: Report) -> None:
    given_up = sum(1 for v in r.verdicts if v.rule in ("gave-up", "giving-up"))
    try:
        atomicfile.write(cfg.watcher.metrics_file, report.metrics(r, given_up).encode(), 0o644)
    except OSError as e:
        log.warning("cannot write metrics to %s: %s", cfg.watcher.metrics_file, e.strerror)
