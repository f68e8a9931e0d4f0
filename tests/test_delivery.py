"""Delivery into a real PostgreSQL 15 with Synnefo's schema and seed: each rule, from recorded messages.

Seed (tests/synnefo/seed.sql): VM 101 STARTED with NICs 201 (public 203.0.113.2)
and 202 (private), 102 STOPPED, 103 BUILD (create job 21 running, task BUILD),
104 ERROR, 105 deleted. Recorded instances are renamed onto those VMs.
"""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from conftest import command
from streams import before, final, job_messages, net_status, store

from snf_watcher import config, ippool
from snf_watcher.delivery import Delivery
from snf_watcher.outbox import Outbox

INST1 = {"inst1.ganeti.test": "snf-101"}
PUBLIC_NIC = {"eth0": "snf-nic-201"}
TESTNET = {"testnet": "snf-net-1"}


@pytest.fixture
def cfg(make_config, synnefo_db):
    return config.load(make_config(database={"dsn": synnefo_db.dsn, "backend_id": 1}))


def deliver(cfg: config.Config, messages: list[dict]) -> Outbox:
    """Store messages as hooks do, deliver everything, return the (open) outbox for inspection."""
    store(cfg.outbox.path, cfg.outbox.spool_dir, messages)
    box = Outbox(cfg.outbox.path)
    worker = Delivery(cfg, box)
    try:
        worker.drain()
    finally:
        worker.close()
    return box


def vm(db, vm_id: int) -> dict:
    cols = "operstate, backendjobid, backendopcode, backendjobstatus, backendlogmsg, task, task_job_id, "
    cols += "flavor_id, deleted, buildpercentage, backendtime, updated"
    row = db.one(f"SELECT {cols} FROM db_virtualmachine WHERE id = %s", (vm_id,))
    return dict(zip([c.strip() for c in cols.split(",")], row, strict=True))


def nics(db, vm_id: int) -> list[tuple]:
    return db.query(
        "SELECT n.id, n.index, n.mac, n.state, n.network_id, ip.address FROM db_networkinterface n "
        "LEFT JOIN db_ipaddress ip ON ip.nic_id = n.id AND ip.ipversion = 4 "
        "WHERE n.machine_id = %s ORDER BY n.id",
        (vm_id,),
    )


def pool(db, pool_id: int) -> ippool.Pool:
    row = db.one(
        'SELECT id, available_map, reserved_map, size, base, "offset" FROM db_ippooltable WHERE id = %s',
        (pool_id,),
    )
    return ippool.Pool(*row)


# ---------------------------------------------------------------- ganeti-op-status


def test_every_status_updates_the_job_fields_and_success_the_operstate(cfg, synnefo_db):
    """Recorded job 17 (a shutdown): queued, waiting and running only touch the backendjob* columns."""
    msgs = job_messages(17, INST1)
    assert [m["status"] for m in msgs] == ["queued", "waiting", "running", "success"]
    deliver(cfg, msgs[:3])
    row = vm(synnefo_db, 101)
    assert (row["operstate"], row["backendjobid"], row["backendopcode"], row["backendjobstatus"]) == (
        "STARTED",
        17,
        "OP_INSTANCE_SHUTDOWN",
        "running",
    )
    deliver(cfg, msgs[3:])
    row = vm(synnefo_db, 101)
    assert (row["operstate"], row["backendjobstatus"]) == ("STOPPED", "success")
    assert row["backendtime"].timestamp() == pytest.approx(
        msgs[3]["event_time"][0] + msgs[3]["event_time"][1] / 1e6
    )


@pytest.mark.parametrize(
    ("job_id", "vm_id", "before_state", "after_state"),
    [
        (9, 102, "STOPPED", "STARTED"),  # OP_INSTANCE_STARTUP
        (10, 102, "STOPPED", "STARTED"),  # OP_INSTANCE_REBOOT
        (17, 101, "STARTED", "STOPPED"),  # OP_INSTANCE_SHUTDOWN
        (8, 103, "BUILD", "STARTED"),  # OP_INSTANCE_CREATE
        (13, 101, "STARTED", "STARTED"),  # OP_INSTANCE_SET_PARAMS (a NIC add): no operstate change
        (18, 102, "STOPPED", "STOPPED"),  # OP_INSTANCE_STARTUP ending in error: no change
    ],
)
def test_operstate_mapping(cfg, synnefo_db, job_id, vm_id, before_state, after_state):
    msgs = job_messages(job_id, {"inst1.ganeti.test": f"snf-{vm_id}"})
    assert vm(synnefo_db, vm_id)["operstate"] == before_state
    deliver(cfg, msgs)
    row = vm(synnefo_db, vm_id)
    assert (row["operstate"], row["backendjobid"], row["backendopcode"], row["backendjobstatus"]) == (
        after_state,
        job_id,
        msgs[-1]["operation"],
        msgs[-1]["status"],
    )
    assert row["backendlogmsg"] == msgs[-1]["logmsg"]


def test_create_success_starts_the_vm_activates_volumes_and_clears_its_task(cfg, synnefo_db):
    synnefo_db.query("UPDATE db_virtualmachine SET task_job_id = 8 WHERE id = 103")  # the seed's job is 21
    deliver(cfg, job_messages(8, {"inst1.ganeti.test": "snf-103"}))
    row = vm(synnefo_db, 103)
    assert (row["operstate"], row["task"], row["task_job_id"]) == ("STARTED", None, None)
    assert synnefo_db.one("SELECT status FROM db_volume WHERE id = 403") == ("IN_USE",)


def test_task_of_another_job_is_kept(cfg, synnefo_db):
    deliver(cfg, job_messages(8, {"inst1.ganeti.test": "snf-103"}))
    row = vm(synnefo_db, 103)
    assert (row["task"], row["task_job_id"]) == ("BUILD", 21)


@pytest.mark.parametrize("status", ["error", "canceled"])
def test_failed_create_is_error_with_nics_and_volumes_in_error(cfg, synnefo_db, status):
    msgs = job_messages(8, {"inst1.ganeti.test": "snf-103"})
    failed = dict(msgs[-1], status=status, logmsg="Failure: prerequisites not met")
    deliver(cfg, [*msgs[:-1], failed])
    row = vm(synnefo_db, 103)
    assert (row["operstate"], row["backendjobstatus"], row["backendlogmsg"]) == (
        "ERROR",
        status,
        "Failure: prerequisites not met",
    )
    assert [n[3] for n in nics(synnefo_db, 103)] == ["ERROR"]
    assert synnefo_db.one("SELECT status FROM db_volume WHERE id = 403") == ("ERROR",)


def test_remove_destroys_the_vm_releases_its_addresses_and_volumes(cfg, synnefo_db):
    free_before = ippool.is_free(pool(synnefo_db, 1), "203.0.113.2")
    deliver(cfg, job_messages(43, {"inst5.ganeti.test": "snf-101"}))
    row = vm(synnefo_db, 101)
    assert (row["operstate"], row["deleted"], row["backendopcode"]) == (
        "DESTROYED",
        True,
        "OP_INSTANCE_REMOVE",
    )
    assert nics(synnefo_db, 101) == []
    assert synnefo_db.query("SELECT id FROM db_ipaddress WHERE id IN (301, 302)") == []
    assert not free_before and ippool.is_free(pool(synnefo_db, 1), "203.0.113.2")
    assert ippool.is_free(pool(synnefo_db, 2), "192.168.10.1")
    history = synnefo_db.query("SELECT address, action, action_reason FROM db_ipaddresshistory WHERE id > 6")
    assert history == [("203.0.113.2", "disassociate", "remove ip from port 201")]  # public addresses only
    assert synnefo_db.one("SELECT status, deleted, machine_id FROM db_volume WHERE id = 401") == (
        "DELETED",
        True,
        None,
    )


def test_remove_of_a_vm_in_error_deletes_it_even_when_ganeti_reports_an_error(cfg, synnefo_db):
    """Ganeti has no instance for a VM whose create failed, so its remove job fails: Synnefo's rule."""
    msgs = job_messages(43, {"inst5.ganeti.test": "snf-104"})
    deliver(cfg, [*msgs[:-1], dict(msgs[-1], status="error", logmsg="Instance 'snf-104' not known")])
    row = vm(synnefo_db, 104)
    assert (row["operstate"], row["deleted"]) == ("DESTROYED", True)


def test_resize_moves_the_vm_to_the_matching_flavor(cfg, synnefo_db):
    """Recorded job 16 sets vcpus 2, maxmem 256: the flavor with those, the same disk and volume type."""
    synnefo_db.add_flavor(7, 2, 256, 20)
    deliver(cfg, job_messages(16, {"inst1.ganeti.test": "snf-103"}))  # VM 103 has flavor 1: 20 GiB
    assert vm(synnefo_db, 103)["flavor_id"] == 7


def test_resize_to_no_flavor_is_a_dead_letter_and_the_rest_flows(cfg, synnefo_db):
    resize = job_messages(16, INST1)
    shutdown = job_messages(17, {"inst1.ganeti.test": "snf-102"})  # another VM, same batch
    box = deliver(cfg, [*resize, *shutdown])
    (letter,) = box.dead_letters()
    assert letter.entry.message == resize[-1]
    assert "no flavor with 2 vCPUs, 256 MiB RAM, 40 GiB disk and volume type 1" in letter.error
    assert vm(synnefo_db, 101)["flavor_id"] == 2  # unchanged, and so is everything else of the message
    assert vm(synnefo_db, 101)["backendjobstatus"] == "running"
    assert vm(synnefo_db, 102)["backendjobstatus"] == "success"
    assert box.pending_count() == 0


def test_dead_letters_are_listed_and_requeued_from_the_command_line(cfg, synnefo_db):
    deliver(cfg, job_messages(16, INST1)).close()
    env = {"SNF_WATCHER_CONFIG": cfg.source, "PATH": "/usr/bin:/bin"}
    listing = subprocess.run(
        [command("snf-watcher"), "dead-letters"], env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert "1 dead letters" in listing.stdout and "no flavor with 2 vCPUs" in listing.stdout
    seq = json.loads(
        subprocess.run(
            [command("snf-watcher"), "dead-letters", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["id"]
    synnefo_db.add_flavor(8, 2, 256, 40)  # the operator adds the missing flavor, then requeues
    requeued = subprocess.run(
        [command("snf-watcher"), "requeue", str(seq)], env=env, capture_output=True, text=True
    )
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout
    delivered = subprocess.run([command("snf-watcher"), "deliver"], env=env, capture_output=True, text=True)
    assert delivered.returncode == 0, delivered.stderr
    assert delivered.stdout.startswith("delivered 1, skipped 0, dead-lettered 0")
    assert vm(synnefo_db, 101)["flavor_id"] == 8


def test_requeue_of_an_unknown_id_says_so(cfg):
    env = {"SNF_WATCHER_CONFIG": cfg.source, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([command("snf-watcher"), "requeue", "4242"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no dead letter with id 4242" in r.stderr


# ---------------------------------------------------------------- ganeti-net-status


def test_net_status_makes_the_nics_match_ganeti(cfg, synnefo_db, caplog):
    """Recorded instance-add hook: eth0 on testnet with the MAC Ganeti chose, eth1 on no Ganeti network."""
    hook = net_status(
        "instance-add-post.instance-create",
        "snf-101",
        [1795254548, 0],
        {"eth0": "snf-nic-201", "eth1": "snf-nic-202"},
        TESTNET,
    )
    with caplog.at_level(logging.WARNING):
        deliver(cfg, [hook])
    assert nics(synnefo_db, 101) == [
        (201, 0, "aa:00:01:2b:ad:27", "ACTIVE", 1, "203.0.113.2"),
        (202, 1, "aa:00:10:4e:7a:02", "ACTIVE", 2, "192.168.10.1"),  # kept as it was
    ]
    assert "VM 101: Ganeti NIC not synced: NIC 1 (snf-nic-202): its network is not Synnefo's" in caplog.text


def test_an_address_change_moves_the_address_in_the_pool(cfg, synnefo_db):
    create = final(8, {"inst1.ganeti.test": "snf-103"})
    hook = net_status(
        "instance-add-post.instance-create", "snf-103", before(create), {"eth0": "snf-nic-204"}, TESTNET
    )
    hook["nics"][0]["ip"] = "203.0.113.6"  # the recording's .2 is NIC 201's in the seed
    deliver(cfg, [hook, create])
    assert nics(synnefo_db, 103) == [(204, 0, "aa:00:01:2b:ad:27", "ACTIVE", 1, "203.0.113.6")]
    assert ippool.is_free(pool(synnefo_db, 1), "203.0.113.4")
    assert not ippool.is_free(pool(synnefo_db, 1), "203.0.113.6")
    history = synnefo_db.query(
        "SELECT address, action, action_reason FROM db_ipaddresshistory WHERE id > 6 ORDER BY id"
    )
    assert history == [
        ("203.0.113.4", "disassociate", "change address of port 204"),
        ("203.0.113.6", "associate", "change address of port 204"),
    ]


def test_an_address_in_use_is_a_dead_letter(cfg, synnefo_db):
    create = final(8, {"inst1.ganeti.test": "snf-103"})
    hook = net_status(
        "instance-add-post.instance-create", "snf-103", before(create), {"eth0": "snf-nic-204"}, TESTNET
    )
    box = deliver(cfg, [hook, create])
    (letter,) = box.dead_letters()
    assert letter.error == "203.0.113.2 is already in use in IP pool 1 (203.0.113.0/24)"
    assert nics(synnefo_db, 103) == [(204, 0, None, "BUILD", 1, "203.0.113.4")]  # nothing half-done
    assert vm(synnefo_db, 103)["operstate"] == "STARTED"  # the create itself applied


def test_net_status_removes_nics_gone_from_ganeti(cfg, synnefo_db):
    """The recorded NIC-remove hook lists eth0 and eth1; NIC 202 is not among them after renaming."""
    hook = net_status(
        "instance-modify-post.modify-nic-remove", "snf-101", [1795254560, 0], PUBLIC_NIC, TESTNET
    )
    deliver(cfg, [hook])
    assert [n[0] for n in nics(synnefo_db, 101)] == [201]
    assert synnefo_db.query("SELECT id FROM db_ipaddress WHERE id = 302") == []
    assert ippool.is_free(pool(synnefo_db, 2), "192.168.10.1")
    # a private network's addresses are not logged
    assert synnefo_db.query("SELECT 1 FROM db_ipaddresshistory WHERE id > 6") == []


def test_a_building_nic_is_kept_until_ganeti_could_know_it(cfg, synnefo_db):
    hook = net_status("instance-modify-post.modify-nic-remove", "snf-103", [1714645500, 0], {}, TESTNET)
    hook["nics"] = []  # NIC 204 (BUILD, created 10:25:00) 5 s before the message: still being attached
    deliver(cfg, [hook])
    assert [n[0] for n in nics(synnefo_db, 103)] == [204]


def test_a_nic_unknown_to_synnefo_is_logged_not_created(cfg, synnefo_db, caplog):
    hook = net_status("instance-add-post.setup-create-inst2", "snf-102", [1795254573, 0], {}, TESTNET)
    with caplog.at_level(logging.WARNING):
        deliver(cfg, [hook])
    assert "VM 102: Ganeti NIC not synced: NIC 0 (unnamed)" in caplog.text
    assert [n[0] for n in nics(synnefo_db, 102)] == []  # NIC 203 is not in Ganeti's list: removed


def test_a_constraint_violation_is_a_dead_letter_and_the_batch_goes_on(cfg, synnefo_db):
    """Two NICs cannot have one MAC (db_networkinterface.mac is UNIQUE)."""
    hook = net_status(
        "instance-add-post.instance-create", "snf-103", [1795254548, 0], {"eth0": "snf-nic-204"}, TESTNET
    )
    hook["nics"][0]["mac"] = "aa:00:00:4e:7a:01"  # NIC 201's
    start = job_messages(9, {"inst1.ganeti.test": "snf-102"})
    box = deliver(cfg, [hook, *start])
    (letter,) = box.dead_letters()
    assert letter.entry.message["type"] == "ganeti-net-status"
    assert "db_networkinterface" in letter.error and "mac" in letter.error
    assert nics(synnefo_db, 103)[0][2] is None  # untouched
    assert vm(synnefo_db, 102)["operstate"] == "STARTED"


def test_a_value_the_column_refuses_is_a_dead_letter_and_the_other_vms_apply(cfg, synnefo_db):
    """backendopcode is varchar(30): the batch's one UPDATE fails, then each VM and message alone."""
    shutdown = job_messages(17, INST1)
    shutdown[-1]["operation"] = "OP_INSTANCE_SHUTDOWN_WITH_A_LONG_NAME"
    others = [
        *job_messages(17, {"inst1.ganeti.test": "snf-102"}),
        *job_messages(9, {"inst1.ganeti.test": "snf-104"}),
    ]
    box = deliver(cfg, [*shutdown, *others])
    (letter,) = box.dead_letters()
    assert letter.entry.message == shutdown[-1]
    assert "value too long for type character varying(30)" in letter.error
    assert vm(synnefo_db, 101)["backendjobstatus"] == "running"  # the job's earlier messages applied
    assert vm(synnefo_db, 101)["operstate"] == "STARTED"
    assert vm(synnefo_db, 102)["backendjobstatus"] == "success"
    assert vm(synnefo_db, 104)["backendjobstatus"] == others[-1]["status"]
    assert box.pending_count() == 0


# ---------------------------------------------------------------- progress


def progress(kind: str, t: int, **fields) -> dict:
    return {"type": kind, "instance": "snf-103", "event_time": [t, 0], **fields}


def test_progress_sets_the_build_percentage_and_writes_diagnostics(cfg, synnefo_db):
    deliver(
        cfg,
        [
            progress("image-copy-progress", 1714645610, progress=60.5),
            progress("image-info", 1714645611, messages=["Image copy finished"]),
            progress("image-helper", 1714645612, subtype="task-start", task="FixPartitionTable"),
            progress("image-warning", 1714645613, messages=["Swap partition not found"]),
            progress(
                "image-error",
                1714645614,
                messages=["Mount failed"],
                stderr="mount: /dev/sdb1: no such device",
            ),
            progress("image-copy-progress", 1714645615, progress=130),
        ],
    )
    assert vm(synnefo_db, 103)["buildpercentage"] == 100  # snf-image may overshoot; Synnefo caps at 100
    rows = synnefo_db.query(
        "SELECT level, source, message, details FROM db_virtualmachinediagnostic "
        "WHERE machine_id = 103 AND id > 3 ORDER BY source_date"
    )
    assert rows == [
        ("DEBUG", "image-info", "Image copy finished", None),
        ("DEBUG", "image-helper-task-start", "FixPartitionTable", None),
        ("WARNING", "image-warning", "Swap partition not found", None),
        ("ERROR", "image-error", "Mount failed", "mount: /dev/sdb1: no such device"),
    ]


def test_a_redelivered_diagnostic_is_written_once(cfg, synnefo_db):
    message = progress("image-error", 1714645614, messages=["Mount failed"])
    deliver(cfg, [message])
    deliver(cfg, [message])
    assert synnefo_db.one(
        "SELECT count(*) FROM db_virtualmachinediagnostic WHERE source = 'image-error'"
    ) == (1,)


def test_an_older_progress_message_does_not_lower_the_percentage(cfg, synnefo_db):
    deliver(cfg, [progress("image-copy-progress", 1714645620, progress=80)])
    deliver(cfg, [progress("image-copy-progress", 1714645610, progress=50)])
    assert vm(synnefo_db, 103)["buildpercentage"] == 80


# ---------------------------------------------------------------- ganeti-network-status


def backend_network(db, network_id: int) -> tuple:
    return db.one(
        "SELECT operstate, backendjobid, backendopcode, backendjobstatus, deleted, mac_prefix "
        "FROM db_backendnetwork WHERE network_id = %s AND backend_id = 1",
        (network_id,),
    )


def test_network_status_sets_the_backend_network_row(cfg, synnefo_db):
    deliver(cfg, job_messages(44, {"tmpnet": "snf-net-2"}))  # OP_NETWORK_DISCONNECT
    assert backend_network(synnefo_db, 2) == (
        "PENDING",
        44,
        "OP_NETWORK_DISCONNECT",
        "success",
        False,
        "aa:00:10",
    )
    deliver(cfg, job_messages(45, {"tmpnet": "snf-net-2"}))  # OP_NETWORK_REMOVE
    assert backend_network(synnefo_db, 2)[:5] == ("DELETED", 45, "OP_NETWORK_REMOVE", "success", True)


def test_network_status_creates_a_missing_backend_network_row(cfg, synnefo_db):
    synnefo_db.query(
        "INSERT INTO db_network (id, name, userid, shared_to_project, flavor, mode, link, mac_prefix, "
        "public, created, updated, deleted, state, drained, floating_ip_pool, external_router) VALUES "
        "(3, 'bob-net', 'bob', false, 'MAC_FILTERED', 'bridged', 'prv1', 'aa:00:2', false, now(), now(), "
        "false, 'PENDING', false, false, false)"
    )
    deliver(cfg, job_messages(2, {"testnet": "snf-net-3"}))  # OP_NETWORK_ADD
    assert backend_network(synnefo_db, 3) == ("PENDING", 2, "OP_NETWORK_ADD", "success", False, "aa:00:20")
    deliver(cfg, job_messages(3, {"testnet": "snf-net-3"}))  # OP_NETWORK_CONNECT
    assert backend_network(synnefo_db, 3)[0] == "ACTIVE"


# ---------------------------------------------------------------- what is skipped


def test_messages_for_unknown_unprefixed_or_deleted_vms_are_skipped_not_retried(cfg, synnefo_db, caplog):
    before_rows = synnefo_db.query("SELECT * FROM db_virtualmachine ORDER BY id")
    with caplog.at_level(logging.INFO):
        box = deliver(
            cfg,
            [
                *job_messages(9, {"inst1.ganeti.test": "snf-999"}),
                *job_messages(9, {"inst1.ganeti.test": "inst1.ganeti.test"}),
                *job_messages(9, {"inst1.ganeti.test": "snf-105"}),
            ],
        )
    assert synnefo_db.query("SELECT * FROM db_virtualmachine ORDER BY id") == before_rows
    assert box.pending_count() == 0 and box.dead_count() == 0
    assert box.counters()["skipped"] == 12
    assert "skipped ganeti-op-status snf-999 job 9 OP_INSTANCE_STARTUP success: no such VM" in caplog.text
    assert "instance 'inst1.ganeti.test' is not named snf-<id>" in caplog.text
    assert "VM 105 is deleted" in caplog.text


def test_a_vm_of_another_backend_is_not_touched(cfg, synnefo_db):
    synnefo_db.query(
        'INSERT INTO db_backend (id, clustername, port, hash, "index", drained, offline, hypervisor, '
        "updated, mfree, mtotal, dfree, dtotal, pinst_cnt, ctotal, public) VALUES "
        "(2, 'other.example', 5080, 'x', 1, false, false, 'kvm', now(), 0, 0, 0, 0, 0, 0, true)"
    )
    synnefo_db.query("UPDATE db_virtualmachine SET backend_id = 2 WHERE id = 102")
    deliver(cfg, job_messages(9, {"inst1.ganeti.test": "snf-102"}))
    assert vm(synnefo_db, 102)["operstate"] == "STOPPED"


# ---------------------------------------------------------------- ordering


def test_a_replayed_old_status_never_moves_the_state_back(cfg, synnefo_db):
    """Synnefo applies a late non-final message of an older job; we do not."""
    start = job_messages(9, {"inst1.ganeti.test": "snf-102"})
    stop = job_messages(17, {"inst1.ganeti.test": "snf-102"})
    deliver(cfg, [*start, *stop])
    after = vm(synnefo_db, 102)
    deliver(cfg, [start[2], start[3], stop[1]])  # running/success of the older job, a duplicate of the newer
    again = vm(synnefo_db, 102)
    assert (again["operstate"], again["backendjobid"], again["backendjobstatus"]) == (
        "STOPPED",
        17,
        "success",
    )
    assert again["updated"] == after["updated"]  # nothing was written at all


def test_out_of_order_delivery_ends_where_in_order_delivery_does(make_config, pg_server, tmp_path):
    msgs = [
        *job_messages(9, INST1),
        *job_messages(16, INST1),
        *job_messages(17, INST1),
        *job_messages(19, INST1),
    ]
    ends = []
    for order in (msgs, list(reversed(msgs)), msgs[::2] + msgs[1::2]):
        name = pg_server.new_database()
        try:
            sub = tmp_path / name
            sub.mkdir()
            c = config.from_mapping(
                {
                    "outbox": {"path": str(sub / "outbox.sqlite"), "spool_dir": str(sub / "spool")},
                    "database": {"dsn": pg_server.dsn(name), "backend_id": 1},
                }
            )
            synnefo_db_conn = pg_server.connect(name)
            synnefo_db_conn.cursor().execute(
                "INSERT INTO db_flavor (id, cpu, ram, disk, deleted, allow_create, volume_type_id, public) "
                "VALUES (9, 2, 256, 40, false, true, 1, true)"
            )
            for m in order:  # one message per batch: the worst case for ordering
                deliver(c, [m]).close()
            cur = synnefo_db_conn.cursor()
            cur.execute(
                "SELECT operstate, backendjobid, backendopcode, backendjobstatus, backendlogmsg, flavor_id, "
                "backendtime FROM db_virtualmachine WHERE id = 101"
            )
            ends.append(cur.fetchone())
            synnefo_db_conn.close()
        finally:
            pg_server.drop_database(name)
    assert ends[0][:6] == ("STARTED", 19, "OP_INSTANCE_STARTUP", "success", None, 9)
    assert ends[1] == ends[0] and ends[2] == ends[0]
