"""Property: any permutation, duplication and batching of a recorded stream ends where in-order delivery does.

The stream spans several VMs and a network, with every kind of message:
op statuses (start, stop, reboot, resize, a failed start, create, remove),
the hooks' NIC lists (with an address change), progress with diagnostics,
and network statuses. Each example delivers into a fresh copy of the seeded
database and compares every row delivery writes with the in-order result.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams import before, final, job_messages, net_status, store

from snf_watcher import config
from snf_watcher.delivery import Delivery
from snf_watcher.outbox import Outbox


def recorded_stream() -> list[dict]:
    """Messages in the order the cluster produced them."""
    inst1, inst2, inst4 = {"inst1.ganeti.test": "snf-101"}, {"inst2.ganeti.test": "snf-102"}, None
    create = job_messages(8, {"inst1.ganeti.test": "snf-103"})
    hook = net_status(
        "instance-add-post.instance-create",
        "snf-103",
        before(create[-1]),
        {"eth0": "snf-nic-204"},
        {"testnet": "snf-net-1"},
    )
    hook["nics"][0]["ip"] = "203.0.113.6"
    t = create[2]["event_time"][0]
    progress = [
        {"type": "image-copy-progress", "instance": "snf-103", "event_time": [t, 100], "progress": 30},
        {"type": "image-info", "instance": "snf-103", "event_time": [t, 200], "messages": ["copying"]},
        {"type": "image-copy-progress", "instance": "snf-103", "event_time": [t, 300], "progress": 90},
        {"type": "image-error", "instance": "snf-103", "event_time": [t, 400], "messages": ["fsck warning"]},
    ]
    inst4 = {"inst4.ganeti.test": "snf-104"}
    stream = [
        *create[:3], *progress, hook, create[3],
        *job_messages(9, inst1), *job_messages(10, inst1), *job_messages(16, inst1), *job_messages(17, inst1),
        *job_messages(18, inst1), *job_messages(19, inst1),
        *job_messages(37, inst2), *job_messages(38, inst2), *job_messages(39, inst2),
        *job_messages(35, inst4), *job_messages(43, {"inst5.ganeti.test": "snf-104"}),
        *job_messages(44, {"tmpnet": "snf-net-2"}), *job_messages(45, {"tmpnet": "snf-net-2"}),
    ]  # fmt: skip
    assert inst4 and final(43, {"inst5.ganeti.test": "snf-104"})["status"] == "success"
    return sorted(stream, key=lambda m: (m["event_time"], m.get("jobId", 0), m.get("opIndex", 0)))


STREAM = recorded_stream()

SNAPSHOT = {
    "vms": "SELECT id, operstate, backendjobid, backendopcode, backendjobstatus, backendlogmsg, flavor_id, "
    "deleted, buildpercentage, backendtime, task, task_job_id FROM db_virtualmachine ORDER BY id",
    "nics": 'SELECT id, machine_id, "index", mac, state, network_id FROM db_networkinterface ORDER BY id',
    "ips": "SELECT address, nic_id, network_id, floating_ip FROM db_ipaddress ORDER BY address",
    "pools": "SELECT id, available_map FROM db_ippooltable ORDER BY id",
    "history": "SELECT address, server_id, action, action_reason FROM db_ipaddresshistory ORDER BY 1, 2, 3",
    "diagnostics": "SELECT machine_id, level, source, source_date, message FROM db_virtualmachinediagnostic "
    "ORDER BY 1, 4, 3",
    "volumes": "SELECT id, status, deleted, machine_id FROM db_volume ORDER BY id",
    "networks": "SELECT network_id, operstate, backendjobid, backendjobstatus, deleted, backendtime "
    "FROM db_backendnetwork ORDER BY network_id",
    "flavors": "SELECT count(*) FROM db_flavor",
}


def deliver_into(pg_server, workdir, batches: list[list[dict]], batch_size: int) -> dict:
    """A fresh database; store and deliver each batch in turn; every table delivery writes, as rows."""
    name = pg_server.new_database()
    try:
        conn = pg_server.connect(name)
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO db_flavor (id, cpu, ram, disk, deleted, allow_create, volume_type_id, public) "
            "VALUES (9, 2, 256, 40, false, true, 1, true)"
        )
        sub = workdir / name
        sub.mkdir()
        cfg = config.from_mapping(
            {
                "outbox": {"path": str(sub / "outbox.sqlite"), "spool_dir": str(sub / "spool")},
                "database": {"dsn": pg_server.dsn(name), "backend_id": 1, "batch_size": batch_size},
            }
        )
        for batch in batches:
            store(cfg.outbox.path, cfg.outbox.spool_dir, batch)
            box = Outbox(cfg.outbox.path)
            worker = Delivery(cfg, box)
            try:
                worker.drain()
                assert box.pending_count() == 0 and box.dead_count() == 0, box.dead_letters()
            finally:
                worker.close()
                box.close()
        out = {}
        for table, sql in SNAPSHOT.items():
            cur.execute(sql)
            out[table] = cur.fetchall()
        conn.close()
        return out
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def in_order(pg_server, tmp_path_factory):
    return deliver_into(pg_server, tmp_path_factory.mktemp("in-order"), [STREAM], 1)


def test_in_order_delivery_is_what_the_cluster_did(in_order):
    vms = {row[0]: row for row in in_order["vms"]}
    assert vms[101][1:4] == ("STARTED", 19, "OP_INSTANCE_STARTUP") and vms[101][6] == 9  # resized by job 16
    assert vms[102][1:5] == ("STARTED", 39, "OP_INSTANCE_STARTUP", "success")
    assert vms[103][1] == "STARTED" and vms[103][8] == 90
    assert vms[104][1] == "DESTROYED" and vms[104][7] is True
    assert [n for n in in_order["nics"] if n[1] == 103] == [(204, 103, 0, "aa:00:01:2b:ad:27", "ACTIVE", 1)]
    assert in_order["networks"][1][1:5] == ("DELETED", 45, "success", True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_permutation_duplication_and_batching_converges(pg_server, tmp_path_factory, in_order, data):
    messages = data.draw(st.permutations(STREAM), label="order")
    extra = data.draw(st.lists(st.sampled_from(STREAM), max_size=12), label="duplicates")
    for dup in extra:
        messages.insert(data.draw(st.integers(0, len(messages)), label="at"), dup)
    cuts = sorted(
        data.draw(st.lists(st.integers(1, len(messages) - 1), max_size=4, unique=True), label="cuts")
    )
    batches = [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)], strict=True)]
    batch_size = data.draw(st.integers(1, 60), label="batch_size")
    got = deliver_into(pg_server, tmp_path_factory.mktemp("perm"), batches, batch_size)
    for table in SNAPSHOT:
        assert got[table] == in_order[table], table
