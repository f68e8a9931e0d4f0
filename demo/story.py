"""The story the demo plays: the stage, then five chapters, each checking what it tells.

Every claim is a check against what a user would look at: the rows in Synnefo's database,
Ganeti's own view (`gnt-instance list`, `gnt-job list`), and what snf-watcher's commands print.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

from cloud import NETWORK, NODE, Cloud, Vm, job_end
from narrator import Narrator, StoryFailed, seconds, stopwatch
from sandbox import CLUSTER, GntResult, gnt, gnt_list, instance_status, submit, wait_jobs, wait_status

T = TypeVar("T")

WEB, DB, APP1, APP2, TMP = (
    Vm(1001, "web-1"),
    Vm(1002, "db-1"),
    Vm(1003, "app-1"),
    Vm(1004, "app-2"),
    Vm(1005, "tmp-1"),
)
BATCH1, BATCH2 = Vm(1006, "batch-1"), Vm(1007, "batch-2")
FIRST = (DB, APP1, APP2, TMP)  # on stage before the story starts
EXTRA_NIC, EXTRA_IP = 2011, "203.0.113.31"  # the NIC the admin adds to web-1 in chapter 4
# A verdict or finding line of snf-watcher's report: "  OK       snf-1001 [restart] ..."
REPORT_LINE = re.compile(r"^\s+(OK|WARNING|CRITICAL|UNKNOWN)\s+(\S+) \[([\w-]+)\] (.*)$", re.M)


def wait_until(what: str, probe: Callable[[], T], timeout: float = 20, every: float = 0.02) -> T:
    """Poll *probe* until it returns something truthy; the story fails with *what* if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if seen:
            return seen
        if time.monotonic() > deadline:
            raise StoryFailed(f"waited {timeout:.0f} s for {what}, in vain (last seen: {seen!r})")
        time.sleep(every)


def lines(report: str) -> dict[str, tuple[str, str, str]]:
    """The report's lines by instance: (level, rule or kind, text)."""
    return {name: (level, rule, text) for level, name, rule, text in REPORT_LINE.findall(report)}


def snf(n: Narrator, cloud: Cloud, *args: str, expect: int = 0, max_lines: int = 30) -> str:
    """Run `snf-watcher ARGS` (the demo's config, as `. env` sets it), show it, check its exit code."""
    done = cloud.snf(*args)
    n.command(["snf-watcher", *args], done.stdout + done.stderr, max_lines)
    if done.returncode != expect:
        raise StoryFailed(f"snf-watcher {' '.join(args)} exited {done.returncode}, not {expect}")
    return done.stdout


def ganeti(n: Narrator, argv: list[str], shown: list[str] | None = None) -> GntResult:
    """Submit a Ganeti job with a gnt-* command, show it and the job's id; the job must succeed."""
    result = submit(argv[0], argv[1], *argv[2:])
    n.command(shown or argv, f"job {result.job_id}: {'success' if result.ok else 'FAILED'}")
    if not result.ok:
        raise StoryFailed(f"`{' '.join(argv)}` failed:\n{result.output}")
    return result


def short_add(vm: Vm) -> list[str]:
    """The create command as the narration shows it: the options that matter to the story."""
    return [
        "gnt-instance",
        "add",
        "...",
        "--net",
        f"0:name=snf-nic-{vm.nic},network={NETWORK},ip={vm.ip}",
        vm.instance,
    ]


def in_step(cloud: Cloud, vm: Vm) -> tuple[str, list[tuple]] | None:
    """The VM's row STARTED and its one NIC ACTIVE with the address Synnefo asked for (or None)."""
    row = cloud.vm_row(vm)
    nics = cloud.nic_rows(vm)
    ok = row["operstate"] == "STARTED" and [(n[0], n[1], n[3]) for n in nics] == [(vm.nic, "ACTIVE", vm.ip)]
    return (row["operstate"], nics) if ok else None


def job_ids() -> set[int]:
    """Every job in Ganeti's queue."""
    return {int(job_id) for (job_id,) in gnt_list("gnt-job", "-o", "id")}


def ganeti_macs(instance: str) -> list[str]:
    out = gnt("gnt-instance", "list", "--no-headers", "-o", "nic.macs", instance).stdout.strip()
    return out.split(",") if out else []


# ---------------------------------------------------------------- the stage


def set_the_stage(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "Setting the stage",
        "A real single-node Ganeti 3.0 cluster (Debian's ganeti package, fake hypervisor, in network "
        "namespaces of its own), Synnefo's database in a private PostgreSQL 15, and snf-watcher "
        "installed on the cluster's master as docs/guide.md says. Everything of the demo's own lives in "
        f"{cloud.paths.root}.",
    )
    cloud.make_dirs()
    with stopwatch() as took:
        cloud.ganeti_up()
    version = gnt("gnt-cluster", "--version").stdout.split()[-1]
    n.ok(
        f"Ganeti {version}: cluster {CLUSTER}, master {NODE}, RAPI forwarded to 127.0.0.1 "
        f"with a write user `snf-watcher` [{seconds(took[0])}]"
    )
    with stopwatch() as took:
        cloud.database_up()
        cloud.synnefo_data()
    n.ok(
        f"PostgreSQL 15 in {cloud.paths.pg}: database `snf_apps` with Synnefo's schema and seed; this "
        f"cluster is backend 1, the seed's own VMs live on another; public network 1 (203.0.113.0/24) "
        f"is {NETWORK} in Ganeti [{seconds(took[0])}]"
    )
    cloud.write_config()
    out = snf(n, cloud, "check-config")
    n.check(out.rstrip().endswith("OK, 0 problems"), f"the config ({cloud.paths.config}) checks out")
    snf(n, cloud, "install-hooks", "--executable", str(cloud.write_hook_wrapper()), max_lines=2)
    n.check(len(cloud.hooks_installed()) == 7, "the hook runs after 7 kinds of instance operation")
    pid = cloud.start_eventd()
    n.ok(f"snf-ganeti-eventd runs (pid {pid}), caught up with the job queue, delivering to the database")

    with stopwatch() as took:
        for vm in FIRST:
            cloud.synnefo_creates(vm)
            ganeti(n, cloud.create_args(vm), short_add(vm))
        for vm in FIRST:
            wait_until(f"VM {vm.id} STARTED with its NIC", lambda vm=vm: in_step(cloud, vm))
    names = ", ".join(f"{vm.name} ({vm.instance})" for vm in FIRST)
    n.ok(f"Synnefo created {len(FIRST)} VMs, {names}: each row STARTED with its NIC [{seconds(took[0])}]")
    out = snf(n, cloud, "reconcile", "--all")
    n.check(not lines(out), "the database and Ganeti agree: reconciliation finds nothing")


# ---------------------------------------------------------------- 1. create


def chapter_1(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "1. A VM is created and started through Ganeti",
        f"Synnefo writes VM {WEB.id} '{WEB.name}' in BUILD and its NIC {WEB.nic} in BUILD (no MAC yet), "
        "then submits the create job. Ganeti runs it; eventd sees each version of the job file, the hook "
        "reports the instance's NICs, and both reach the database.",
    )
    cloud.synnefo_creates(WEB)
    n.check(cloud.vm_row(WEB)["operstate"] == "BUILD", f"VM {WEB.id} is BUILD in Synnefo's database")
    create = ganeti(n, cloud.create_args(WEB), short_add(WEB))
    operstate, nics = wait_until(f"VM {WEB.id} STARTED with its NIC", lambda: in_step(cloud, WEB), timeout=10)
    seen = time.time() - job_end(create.job_id)  # at most: the demo polls every 20 ms
    ((written,),) = cloud.db.query(
        "SELECT greatest(v.updated, max(n.updated)) FROM db_virtualmachine v "
        "JOIN db_networkinterface n ON n.machine_id = v.id WHERE v.id = %s GROUP BY v.updated",
        (WEB.id,),
    )
    latency = written.timestamp() - job_end(create.job_id)
    n.check(
        0 <= latency <= seen < 1.0,
        f"VM {WEB.id} went BUILD -> {operstate} with NIC {WEB.nic} ACTIVE: written {latency * 1000:.0f} ms "
        f"after Ganeti ended job {create.job_id} (the rows' `updated`), seen by the demo after "
        f"{seen * 1000:.0f} ms",
        "the target is under a second",
    )
    ((nic, _, mac, address),) = nics
    n.check(
        [mac] == ganeti_macs(WEB.instance) and address == WEB.ip,
        f"NIC {nic}: MAC {mac} as Ganeti made it, address {address} taken from the pool of network 1",
        f"Ganeti has {ganeti_macs(WEB.instance)}",
    )
    row = cloud.vm_row(WEB)
    n.check(
        (row["backendjobid"], row["backendopcode"], row["backendjobstatus"])
        == (create.job_id, "OP_INSTANCE_CREATE", "success"),
        f"the row names the job: {row['backendopcode']} {row['backendjobid']} {row['backendjobstatus']}",
    )
    n.record(
        "1",
        f"{WEB.name} created and started (job {create.job_id})",
        "eventd and the hook: row BUILD -> STARTED, NIC ACTIVE with MAC and address",
        f"{latency * 1000:.0f} ms after the job ended (seen after {seen * 1000:.0f} ms)",
    )


# ---------------------------------------------------------------- 2. crash


def chapter_2(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "2. The guest crashes",
        f"{WEB.instance}'s guest dies (the fake hypervisor's runtime file goes away): Ganeti says "
        "ERROR_down. Its owner wants it running (Synnefo says STARTED), so the watcher pass, which cron "
        "runs every 5 minutes, restarts it. Here we run the pass by hand.",
    )
    cloud.sandbox.crash(WEB.instance)
    n.ok(f"Ganeti: {WEB.instance} is {instance_status(WEB.instance)}")
    t0 = time.monotonic()
    report = snf(n, cloud)
    level, rule, text = lines(report).get(WEB.instance, ("", "", ""))
    job = re.search(r"-> job (\d+)$", text)
    n.check(
        rule == "restart" and job is not None,
        f"the pass restarts {WEB.instance}: rule `restart`, a startup job",
    )
    job_id = int(job.group(1))
    status = wait_jobs([job_id])[job_id]
    wait_status(WEB.instance, "running")
    took = time.monotonic() - t0
    n.check(
        status == "success",
        f"startup job {job_id} succeeded: {WEB.instance} runs again {took:.1f} s after the pass began",
    )
    diagnostics = cloud.db.query(
        "SELECT level, message FROM db_virtualmachinediagnostic "
        "WHERE machine_id = %s AND source = 'snf-watcher'",
        (WEB.id,),
    )
    why = diagnostics[0][1] if diagnostics else "-"
    n.check(
        len(diagnostics) == 1 and "Restarted by snf-watcher: ERROR_down" in why,
        f"why, for Synnefo's users and admins (db_virtualmachinediagnostic): {why}",
        f"diagnostics: {diagnostics}",
    )
    wait_until(
        "eventd to deliver the startup job",
        lambda: cloud.vm_row(WEB)["backendjobid"] == job_id and cloud.vm_row(WEB)["operstate"] == "STARTED",
    )
    n.ok(f"eventd delivered the startup job too: VM {WEB.id} STARTED, last job {job_id}")
    out = snf(n, cloud, "status")
    n.check("attempts 1/5" in out, "the state file counts the attempt: 1 of 5 (MAXTRIES)")
    report = snf(n, cloud)
    n.check(
        lines(report).get(WEB.instance, ("", "", ""))[1] == "recovered",
        "the next pass sees it running: record dropped",
    )
    n.check(snf(n, cloud, "status").startswith("0 instances"), "no restart record is left")
    n.record(
        "2",
        f"{WEB.name}'s guest crashed (ERROR_down)",
        f"watcher pass: startup job {job_id}, attempt counted, diagnostic row; next pass: recovered",
        f"running again {took:.1f} s after the pass began",
    )


# ---------------------------------------------------------------- 3. owner stopped


def chapter_3(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "3. A VM its owner stopped is left alone",
        f"The owner of {DB.name} powered it off from inside the guest, and Synnefo's row says STOPPED. "
        "To Ganeti a guest that turned itself off looks exactly like a crash: ERROR_down, and Ganeti's "
        "own watcher would start it again. snf-watcher asks Synnefo what the owner wants.",
    )
    cloud.db.query(
        "UPDATE db_virtualmachine SET operstate = 'STOPPED', action = 'STOP' WHERE id = %s", (DB.id,)
    )
    cloud.sandbox.crash(DB.instance)
    n.ok(f"Ganeti: {DB.instance} is {instance_status(DB.instance)}; Synnefo: VM {DB.id} is STOPPED")
    jobs_before = job_ids()
    with stopwatch() as took:
        report = snf(n, cloud)
    n.check(
        lines(report).get(DB.instance, ("", "", ""))[1] == "owner-stopped" and "-> job" not in report,
        f"the pass leaves {DB.instance} alone (rule `owner-stopped`) and submits no job",
    )
    time.sleep(2)
    jobs_after = job_ids()
    n.check(
        instance_status(DB.instance) == "ERROR_down"
        and jobs_after == jobs_before
        and cloud.vm_row(DB)["operstate"] == "STOPPED",
        f"{DB.instance} is still down, no Ganeti job was added, the row still says STOPPED",
    )
    n.record(
        "3",
        f"{DB.name} powered off by its owner (ERROR_down, row STOPPED)",
        "watcher pass: owner-stopped, nothing done",
        f"one pass, {seconds(took[0])}",
    )


# ---------------------------------------------------------------- 4. drift


def findings(report: str) -> dict[str, str]:
    """Reconciliation's findings in a report, by instance: their kind."""
    return {name: kind for name, (_, kind, text) in lines(report).items() if text.startswith("Ganeti: ")}


def snapshot(cloud: Cloud) -> list[tuple]:
    """What reconciliation and delivery decide, for the demo's VMs: operstate, flavor, deletion, NICs."""
    return cloud.db.query(
        "SELECT v.id, v.operstate, v.flavor_id, v.deleted, "
        "array_agg(ARRAY[n.id::text, n.state, n.mac] ORDER BY n.id) FILTER (WHERE n.id IS NOT NULL) "
        "FROM db_virtualmachine v LEFT JOIN db_networkinterface n ON n.machine_id = v.id "
        "WHERE v.backend_id = 1 GROUP BY v.id ORDER BY v.id"
    )


def chapter_4(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "4. An admin changes things behind Synnefo's back",
        "snf-watcher's event path is off for a while (eventd stopped, the hooks removed), as on a "
        f"cluster before snf-watcher was installed. An admin shuts {APP1.name} down, resizes {APP2.name}, "
        f"adds to {WEB.name} the NIC Synnefo asked for an hour ago (its row waits in BUILD: the job was "
        f"lost) and removes {TMP.name}. No event tells Synnefo; reconciliation finds each difference in "
        "what Ganeti has, and the cron pass fixes the safe ones.",
    )
    cloud.stop_eventd()
    snf(n, cloud, "remove-hooks", max_lines=2)
    n.ok("eventd stopped, the hooks removed")
    cloud.synnefo_attaches(WEB, EXTRA_NIC, age="1 hour")
    with stopwatch() as admin:
        ganeti(n, ["gnt-instance", "shutdown", APP1.instance])
        ganeti(n, ["gnt-instance", "modify", "-B", "vcpus=2,memory=128M", APP2.instance])
        nic = f"add:name=snf-nic-{EXTRA_NIC},network={NETWORK},ip={EXTRA_IP}"
        ganeti(n, ["gnt-instance", "modify", "--net", nic, WEB.instance])
        ganeti(n, ["gnt-instance", "remove", "-f", TMP.instance])
    expected = {
        APP1.instance: "operstate",
        APP2.instance: "flavor",
        WEB.instance: "nics",
        TMP.instance: "stale",
    }

    with stopwatch() as detect:
        report = snf(n, cloud, "reconcile", "--all", expect=1)
    n.check(
        findings(report) == expected,
        "reconciliation reports each difference, and changes nothing without --fix: "
        + ", ".join(f"{name} {kind}" for name, kind in expected.items()),
        f"found {findings(report)}",
    )
    with stopwatch() as fix:
        report = snf(n, cloud, expect=1)
    fixed = {name for name, (_, _, text) in lines(report).items() if "; fix: " in text}
    n.check(
        fixed == {APP1.instance, APP2.instance, WEB.instance},
        "the cron pass fixes the safe kinds (operstate, flavor, nics) and only reports the stale row: "
        "marking a VM destroyed is for an operator to ask (--fix-stale)",
        f"fixed: {sorted(fixed)}",
    )
    app1, app2 = cloud.vm_row(APP1), cloud.vm_row(APP2)
    n.check(app1["operstate"] == "STOPPED", f"VM {APP1.id} STOPPED, as Ganeti has it")
    n.check(app2["flavor_id"] == 65, f"VM {APP2.id} on flavor 65 (2 vCPUs, 128 MiB), as Ganeti has it")
    macs = ganeti_macs(WEB.instance)
    n.check(
        [(nic_id, state, mac, ip) for nic_id, state, mac, ip in cloud.nic_rows(WEB)]
        == [(WEB.nic, "ACTIVE", macs[0], WEB.ip), (EXTRA_NIC, "ACTIVE", macs[1], EXTRA_IP)],
        f"NIC {EXTRA_NIC} ACTIVE with MAC {macs[1]} and address {EXTRA_IP}, as Ganeti has it",
        f"NIC rows: {cloud.nic_rows(WEB)}",
    )
    with stopwatch() as destroy:
        snf(n, cloud, "reconcile", "--fix-stale", expect=1)
    tmp = cloud.vm_row(TMP)
    n.check(
        (tmp["operstate"], tmp["deleted"], cloud.nic_rows(TMP), cloud.address_in_use(TMP.ip))
        == ("DESTROYED", True, [], False),
        f"with --fix-stale: VM {TMP.id} DESTROYED, its NIC gone, {TMP.ip} back in the pool",
    )
    out = snf(n, cloud, "reconcile", "--all")
    n.check(not findings(out), "a last reconciliation finds nothing")

    before, delivered = snapshot(cloud), cloud.delivered()
    snf(n, cloud, "install-hooks", "--executable", str(cloud.paths.hook), max_lines=2)
    cloud.start_eventd()
    wait_until("eventd to deliver what it missed", lambda: cloud.pending() == 0)
    n.check(
        snapshot(cloud) == before,
        f"eventd back: it caught up on the 4 jobs it missed ({cloud.delivered() - delivered} messages); "
        "older than the fixes, they changed nothing",
        f"before: {before}\nafter: {snapshot(cloud)}",
    )
    n.record(
        "4",
        f"admin: shutdown, resize, NIC added, instance removed ({seconds(admin[0])})",
        "reconcile: 4 differences; cron pass fixed 3; --fix-stale the 4th",
        f"passes {seconds(detect[0])}, {seconds(fix[0])}, {seconds(destroy[0])}",
    )


# ---------------------------------------------------------------- 5. outage


def chapter_5(cloud: Cloud, n: Narrator) -> None:
    n.chapter(
        "5. The database goes away during a burst of operations",
        f"Synnefo has just accepted two VMs ({BATCH1.name}, {BATCH2.name}: rows in BUILD) when its "
        "database goes down. Ganeti goes on: the creates run, and admins reboot, start, stop, resize and "
        "remove. eventd keeps every message in its outbox and retries (every 2 s at most here: "
        "database.max_retry_interval); when the database returns, all of it lands, in order, once.",
    )
    for vm in (BATCH1, BATCH2):
        cloud.synnefo_creates(vm)
    delivered = cloud.delivered()
    offset = cloud.eventd_log.stat().st_size
    cloud.stop_database()
    n.ok("PostgreSQL stopped")
    down = time.monotonic()
    burst = [
        ganeti(n, cloud.create_args(BATCH1), short_add(BATCH1)),
        ganeti(n, cloud.create_args(BATCH2), short_add(BATCH2)),
        ganeti(n, ["gnt-instance", "reboot", WEB.instance]),
        ganeti(n, ["gnt-instance", "startup", APP1.instance]),
        ganeti(n, ["gnt-instance", "shutdown", APP2.instance]),
        ganeti(n, ["gnt-instance", "modify", "-B", "vcpus=1,memory=64M", APP2.instance]),
        ganeti(n, ["gnt-instance", "remove", "-f", BATCH2.instance]),
    ]
    wait_until(
        "eventd to notice", lambda: "database unavailable" in cloud.log_since(cloud.eventd_log, offset)
    )
    snf(n, cloud, "outbox", "--limit", "4")
    waiting = cloud.pending()
    n.check(waiting >= 2 * len(burst), f"{waiting} messages wait in the outbox for {len(burst)} jobs")
    time.sleep(max(0.0, 10 - (time.monotonic() - down)))
    outage = time.monotonic() - down
    cloud.start_database()
    up = time.monotonic()
    wait_until("the outbox to drain", lambda: cloud.pending() == 0, timeout=30)
    drained = time.monotonic() - up
    n.check(
        cloud.delivered() - delivered >= waiting,
        f"all {waiting} applied {drained:.1f} s after the database returned (it was away {outage:.0f} s)",
        f"delivered {cloud.delivered() - delivered}",
    )
    log = cloud.log_since(cloud.eventd_log, offset)
    n.check("database available again" in log, "eventd's log says when the outage began and ended:")
    for line in log.splitlines():
        if "database unavailable" in line or "database available again" in line:
            n.say(line.split(": ", 1)[-1] if len(line) > 200 else line)
    n.check(
        in_step(cloud, BATCH1) is not None,
        f"VM {BATCH1.id} STARTED with NIC {BATCH1.nic} ACTIVE and {BATCH1.ip}",
    )
    b2 = cloud.vm_row(BATCH2)
    n.check(
        (b2["operstate"], b2["deleted"], cloud.nic_rows(BATCH2), cloud.address_in_use(BATCH2.ip))
        == ("DESTROYED", True, [], False),
        f"VM {BATCH2.id}, created and removed while the database was away: DESTROYED, NIC gone, "
        f"{BATCH2.ip} free",
    )
    web, app1, app2 = cloud.vm_row(WEB), cloud.vm_row(APP1), cloud.vm_row(APP2)
    n.check(
        (web["operstate"], web["backendjobid"], app1["operstate"], app2["operstate"], app2["flavor_id"])
        == ("STARTED", burst[2].job_id, "STARTED", "STOPPED", 64),
        f"{WEB.name} STARTED after its reboot (job {burst[2].job_id}), {APP1.name} STARTED, {APP2.name} "
        "STOPPED on flavor 64 again",
    )
    out = snf(n, cloud, "dead-letters")
    n.check(out.startswith("0 dead letters"), "no message was set aside")
    out = snf(n, cloud, "reconcile", "--all")
    n.check(not findings(out), "reconciliation finds nothing: nothing was lost")
    n.record(
        "5",
        f"database away {outage:.0f} s; {len(burst)} operations meanwhile",
        f"{waiting} messages kept in the outbox, retried, all applied in order",
        f"{drained:.1f} s after the database returned",
    )


# ---------------------------------------------------------------- the end


def look_around(cloud: Cloud, n: Narrator) -> None:
    p = cloud.paths
    n.title("Look around: it all keeps running")
    for line in (
        f". {p.env}                 # the demo's commands, config and database in this shell",
        "snf-watcher status                  # restart records (the state file)",
        "snf-watcher                         # one watcher pass, as cron runs it",
        "snf-watcher reconcile --all         # compare the database with Ganeti now",
        "snf-watcher outbox                  # what waits for the database, and counters",
        f"less {p.logs}/snf-ganeti-eventd.log    # eventd's log; snf-watcher.log beside it",
        f"cat {p.metrics}              # the last pass's metrics (Prometheus text)",
        "psql -c 'SELECT id, name, operstate, flavor_id FROM db_virtualmachine WHERE backend_id = 1'",
        "gnt-instance list -o name,status,nic.macs,nic.ips   # Ganeti's side",
        f"cat {p.config}",
    ):
        n.verbatim(line)
    n.title("Tear it all down (eventd, the hooks, PostgreSQL, the Ganeti sandbox, the demo's directory)")
    n.verbatim("make demo-down")
