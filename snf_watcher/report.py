"""What a watcher pass tells people and monitoring: text, JSON, metrics, exit code (pure).

Exit codes follow the Nagios convention the monitoring of a Debian cron job
expects: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Metrics are Prometheus text
for node-exporter's textfile collector, one gauge per figure of this pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from snf_watcher.config import RECONCILE_KINDS as KINDS
from snf_watcher.restart import RULES, Policy, Verdict, utc
from snf_watcher.state import State

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class Report:
    started: float
    finished: float = 0.0
    dry_run: bool = False
    exit_code: int = OK
    headline: str = ""  # why the pass stopped early (paused, lock busy, RAPI down), or ""
    verdicts: list[Verdict] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # instance -> startup job submitted
    problems: list[str] = field(default_factory=list)  # each a WARNING or worse, in words
    statuses: dict[str, int] = field(default_factory=dict)  # Ganeti run status -> instances
    rebooted: list[str] = field(default_factory=list)
    rapi_calls: int = 0
    lock_busy: bool = False
    delivered: int | None = None  # messages delivered at the end of the pass (None: not tried)
    findings: list[dict[str, Any]] = field(default_factory=list)  # reconciliation, see `finding`
    checked: int = 0  # VMs reconciliation checked
    checked_networks: int = 0
    checked_pools: int = 0

    def worst(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)


def text(r: Report) -> str:
    """The report a person reads: one summary line, then a line per instance and problem."""
    lines = [f"snf-watcher {LEVELS[r.exit_code]}: {summary(r)}"]
    for v in r.verdicts:
        job = f" -> job {r.jobs[v.instance]}" if v.instance in r.jobs else ""
        lines.append(f"  {LEVELS[v.severity]:<8} {v.instance} [{v.rule}] {v.text}{job}")
    lines += [finding_line(f) for f in r.findings]
    lines += [f"  node {n} rebooted since the last pass (boot id changed)" for n in r.rebooted]
    lines += [f"  problem: {p}" for p in r.problems]
    return "\n".join(lines)


def summary(r: Report) -> str:
    if r.headline:
        return r.headline
    rules = Counter(v.rule for v in r.verdicts)
    verb = "would submit" if r.dry_run else "submitted"
    parts = [
        f"{sum(r.statuses.values())} instances ({_statuses(r.statuses)})",
        f"{verb} {sum(1 for v in r.verdicts if v.restart)} restarts",
    ]
    parts += [f"{n} {rule}" for rule, n in sorted(rules.items()) if rule not in ("restart",)]
    if r.checked or r.checked_networks or r.checked_pools:
        kinds = Counter(f["kind"] for f in r.findings)
        drift = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no drift"
        parts.append(
            f"reconciled {r.checked} VMs, {r.checked_networks} networks, {r.checked_pools} IP pools: {drift}"
        )
    if r.delivered is not None:
        parts.append(f"delivered {r.delivered} events")
    return "; ".join(parts) + f" ({r.finished - r.started:.2f}s, {r.rapi_calls} RAPI calls)"


def finding(o: Any, severity: int) -> dict[str, Any]:
    """A reconcile.Outcome as the report keeps it (plain data, for --json)."""
    f = o.finding
    return {
        "kind": f.kind,
        "subject": f.subject.split(":")[0],
        "id": f.id,
        "name": f.name,
        "ganeti": f.ganeti,
        "database": f.database,
        "action": o.action,
        "text": o.text,
        "severity": severity,
    }


def finding_line(f: dict[str, Any]) -> str:
    return (
        f"  {LEVELS[f['severity']]:<8} {f['name']} [{f['kind']}] Ganeti: {f['ganeti']}; "
        f"database: {f['database']}; {f['action']}: {f['text']}"
    )


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"


def as_json(r: Report) -> dict[str, Any]:
    out = asdict(r)
    out["level"] = LEVELS[r.exit_code]
    out["summary"] = summary(r)
    out["started"] = iso(r.started)
    out["finished"] = iso(r.finished)
    return out


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def metrics(r: Report, given_up: int) -> str:
    """Prometheus text exposition of this pass; *given_up* counts records out of budget now."""
    rules = Counter(v.rule for v in r.verdicts)
    out: list[str] = []

    def gauge(name: str, help_: str, values: dict[str, float] | float, label: str = "") -> None:
        out.append(f"# HELP snf_watcher_{name} {help_}")
        out.append(f"# TYPE snf_watcher_{name} gauge")
        if isinstance(values, dict):
            out.extend(f'snf_watcher_{name}{{{label}="{k}"}} {v}' for k, v in sorted(values.items()))
        else:
            out.append(f"snf_watcher_{name} {values}")

    gauge("pass_timestamp_seconds", "When the last pass ended (epoch).", round(r.finished, 3))
    gauge("pass_duration_seconds", "How long the last pass took.", round(r.finished - r.started, 3))
    gauge(
        "pass_exit_code", "Exit code of the last pass: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.", r.exit_code
    )
    gauge("instances", "Instances by Ganeti run status, as the last pass saw them.", r.statuses, "status")
    gauge("restarts_submitted", "Startup jobs the last pass submitted.", len(r.jobs))
    gauge(
        "restarts_succeeded",
        "Instances running again after a restart, seen by the last pass.",
        rules["recovered"],
    )
    gauge("given_up", "Instances whose restart budget is spent.", given_up)
    gauge("verdicts", "Instances per rule that fired in the last pass.", {k: rules[k] for k in RULES}, "rule")
    drift = Counter(f["kind"] for f in r.findings)
    gauge("drift", "Differences reconciliation found, by kind.", {k: drift[k] for k in KINDS}, "kind")
    gauge("vms_reconciled", "VMs the last pass's reconciliation checked.", r.checked)
    gauge("networks_reconciled", "Networks the last pass's reconciliation checked.", r.checked_networks)
    gauge("pools_reconciled", "IP pools the last pass's reconciliation checked.", r.checked_pools)
    gauge("lock_busy", "1 if the last pass found another pass holding the state lock.", int(r.lock_busy))
    gauge("rapi_calls", "RAPI requests made by the last pass.", r.rapi_calls)
    return "\n".join(out) + "\n"


def status(s: State, policy: Policy, now: float) -> list[dict[str, Any]]:
    """Every restart record as `snf-watcher status` shows it, oldest failure first."""
    rows = []
    for uuid, rec in sorted(s.instances.items(), key=lambda kv: (kv[1].first_failure or 0, kv[1].name)):
        expires = rec.since + policy.retry_expiration if rec.since is not None else None
        rows.append(
            {
                "instance": rec.name,
                "uuid": uuid,
                "vm_id": rec.vm_id,
                "attempts": rec.attempts,
                "max_tries": policy.max_tries,
                "first_failure": rec.first_failure,
                "last_attempt": rec.last_attempt,
                "last_job": rec.last_job,
                "last_job_status": rec.last_job_status,
                "gave_up": rec.gave_up,
                # a given-up instance waits for its record to expire; any other is tried next pass
                "next_attempt": expires if rec.gave_up is not None else now,
                "expires": expires,
            }
        )
    return rows


def status_line(row: dict[str, Any]) -> str:
    def when(epoch: float | None) -> str:
        return utc(epoch) if epoch is not None else "never"

    job = (
        f"job {row['last_job']} {row['last_job_status'] or 'not checked yet'}"
        if row["last_job"]
        else "no job"
    )
    state_ = f"GAVE UP at {utc(row['gave_up'])}" if row["gave_up"] is not None else "trying"
    return (
        f"  {row['instance']} (VM {row['vm_id']}, {row['uuid']}): {state_}; attempts {row['attempts']}/"
        f"{row['max_tries']}, last attempt {when(row['last_attempt'])} ({job}), "
        f"next attempt {'next pass' if row['gave_up'] is None else when(row['next_attempt'])}, "
        f"record expires {when(row['expires'])}"
    )
