"""Recorded Ganeti 3.0.2 events as Synnefo messages, renamed into the seed's world.

The recordings name instances inst1.ganeti.test ..., networks testnet and
tmpnet, NICs eth0 ...; the Synnefo seed has VMs snf-101 ..., networks
snf-net-1/2 and NICs snf-nic-201 .... Tests pick the mapping; everything
else (statuses, times, log messages, job fields, MACs, addresses) is as
Ganeti wrote it.
"""

from __future__ import annotations

import copy
from typing import Any

from conftest import hook_env, job_versions

from ganeti_hooks import jobqueue
from ganeti_hooks.hook import hook_message
from snf_watcher import spool
from snf_watcher.outbox import Outbox

Message = dict[str, Any]


def job_messages(job_id: int, rename: dict[str, str]) -> list[Message]:
    """Every message eventd reports for a recorded job, in order, names mapped by *rename*."""
    out, reported = [], None
    for data in job_versions(job_id):
        job = jobqueue.parse_job(data)
        progress = jobqueue.advance(job, reported, "cluster.ganeti.test", [0, 0])
        reported = progress.reported
        out += [_renamed(message, rename) for _, message in progress.new]
    if not out:
        raise AssertionError(f"recorded job {job_id} gives no messages")
    return out


def final(job_id: int, rename: dict[str, str]) -> Message:
    return job_messages(job_id, rename)[-1]


def _renamed(message: Message, rename: dict[str, str]) -> Message:
    m = copy.deepcopy(message)
    for field in ("instance", "network"):
        if field in m:
            if m[field] not in rename:
                raise AssertionError(f"no mapping for recorded {field} {m[field]!r}")
            m[field] = rename[m[field]]
    return m


def net_status(
    recording: str, instance: str, at: list[int], nics: dict[str, str], networks: dict[str, str]
) -> Message:
    """The hook's ganeti-net-status for a recorded hook environment, at time *at*."""
    message = hook_message(hook_env(recording), at[0] + at[1] / 1e6)
    assert message is not None, recording
    message["instance"] = instance
    message["event_time"] = at
    for nic in message["nics"]:
        nic["name"] = nics.get(nic["name"], nic["name"])
        if nic["network"] is not None:
            nic["network"] = networks[nic["network"]]
    return message


def before(message: Message, micros: int = 1000) -> list[int]:
    """An event time just before *message*'s (hooks run before their job is marked done)."""
    total = message["event_time"][0] * 1_000_000 + message["event_time"][1] - micros
    return [total // 1_000_000, total % 1_000_000]


def store(outbox_path: str, spool_dir: str, messages: list[Message]) -> None:
    """Put messages into the outbox the way hooks do: spool files, then ingest, in order."""
    for message in messages:
        spool.write(spool_dir, message)
    box = Outbox(outbox_path)
    try:
        box.ingest_spool(spool_dir)
    finally:
        box.close()


def busy_cluster(vm_ids: list[int], jobs_per_vm: int, first_job: int = 1000) -> list[Message]:
    """Recorded startup (job 9) and shutdown (job 17) streams, replayed for many VMs, interleaved.

    Job ids and master times increase the way a busy queue's do; every other
    field is the recording's. In order, each VM ends STOPPED after an even
    number of jobs.
    """
    templates = [job_messages(9, {"inst1.ganeti.test": "x"}), job_messages(17, {"inst1.ganeti.test": "x"})]
    out, job_id, t = [], first_job, 1_800_000_000_000_000
    for n in range(jobs_per_vm):
        for vm_id in vm_ids:
            for message in templates[n % 2]:
                t += 137
                out.append(
                    dict(
                        message,
                        instance=f"snf-{vm_id}",
                        jobId=job_id,
                        event_time=[t // 1_000_000, t % 1_000_000],
                    )
                )
            job_id += 1
    return out
