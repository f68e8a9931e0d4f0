"""The watcher's state file, on real files and real processes: what survives kills, locks, old and new
versions, damage and planted links."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snf_watcher import atomicfile, lockfile, spool, state
from snf_watcher.state import Record, State

UUID1 = "1b2c3d4e-0000-4000-8000-000000000001"
UUID2 = "1b2c3d4e-0000-4000-8000-000000000002"
UUID3 = "1b2c3d4e-0000-4000-8000-000000000003"


def sample() -> State:
    return State(
        instances={
            UUID1: Record(
                "snf-101",
                vm_id=101,
                attempts=2,
                first_failure=1795254000.5,
                last_attempt=1795254300.25,
                last_job=4711,
                last_job_status="error",
            ),
            UUID2: Record("web1.example.org", attempts=5, first_failure=1795250000.0, gave_up=1795252000.0),
        },
        nodes={"node1.ganeti.test": "a3f1c2d4-boot", "node2.ganeti.test": "77e0-boot"},
    )


def child(code: str) -> subprocess.Popen:
    """A separate Python process running *code*, with a line-buffered stdout to talk back."""
    return subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- pure: parse / to_json

times = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**53)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
record_extras = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in state._FIELDS), json_values, max_size=2
)
records = st.builds(
    Record,
    name=st.text(max_size=20),
    vm_id=st.none() | counts,
    attempts=counts,
    first_failure=times,
    last_attempt=times,
    last_job=st.none() | counts,
    last_job_status=st.none() | st.sampled_from(["queued", "running", "success", "error", "canceled"]),
    gave_up=times,
    extra=record_extras,
)
states = st.builds(
    State,
    instances=st.dictionaries(st.uuids().map(str), records, max_size=4),
    nodes=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), max_size=3),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in state._TOP_KEYS), json_values, max_size=2
    ),
)


@settings(max_examples=150, deadline=None)
@given(states)
def test_every_state_reads_back_as_itself_with_no_problems(s):
    assert state.parse(to_and_from_text(s)) == (s, [])


def to_and_from_text(s: State):
    return json.loads(json.dumps(state.to_json(s), allow_nan=False))


def test_the_file_format_is_versioned_and_leaves_out_nulls():
    assert state.to_json(sample()) == {
        "version": 1,
        "instances": {
            UUID1: {
                "name": "snf-101",
                "vm_id": 101,
                "attempts": 2,
                "first_failure": 1795254000.5,
                "last_attempt": 1795254300.25,
                "last_job": 4711,
                "last_job_status": "error",
            },
            UUID2: {
                "name": "web1.example.org",
                "attempts": 5,
                "first_failure": 1795250000.0,
                "gave_up": 1795252000.0,
            },
        },
        "nodes": {"node1.ganeti.test": "a3f1c2d4-boot", "node2.ganeti.test": "77e0-boot"},
    }


def test_the_record_fields_are_exactly_the_ones_parse_reads():
    assert list(state._FIELDS) + ["extra"] == list(Record.__dataclass_fields__)


@pytest.mark.parametrize(
    "data, problem",
    [
        ([1, 2], "top level: expected an object, got an array; starting from an empty state"),
        ("state", "top level: expected an object, got a string; starting from an empty state"),
        ({"version": 1, "instances": [], "nodes": {}}, "instances: expected an object, got an array"),
        ({"version": "1", "instances": {}}, "version: expected an integer, got '1'; read as version 1"),
    ],
)
def test_parse_reports_what_it_could_not_use_and_never_raises(data, problem):
    s, problems = state.parse(data)
    assert s.instances == {} and len(problems) == 1 and problems[0].startswith(problem)


# ---------------------------------------------------------------- files: versions and damage


def test_a_missing_state_file_is_an_empty_state_without_problems(tmp_path):
    assert state.load(str(tmp_path / "nowhere" / "state.json")) == (State(), [])


def test_save_then_load_gives_the_same_state_in_a_0600_file_in_a_new_0700_dir(tmp_path):
    path = str(tmp_path / "lib" / "state.json")
    old = os.umask(0)
    try:
        state.save(path, sample())
    finally:
        os.umask(old)
    assert state.load(path) == (sample(), [])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "lib").st_mode) == 0o700
    assert os.listdir(tmp_path / "lib") == ["state.json"]  # no temp file left behind


def test_save_makes_an_existing_world_readable_file_0600(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{}")
    path.chmod(0o644)
    state.save(str(path), sample())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_older_version_file_loads_with_defaults_for_what_it_lacks(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"instances": {UUID1: {"name": "snf-101", "attempts": 3}, UUID2: {}}}))
    s, problems = state.load(str(path))
    assert problems == [
        f"{path}: no version key: a state file from an older version; missing fields take their defaults"
    ]
    assert s == State(instances={UUID1: Record("snf-101", attempts=3), UUID2: Record("")})


def test_a_newer_version_file_loads_and_its_added_keys_survive_our_rewrite(tmp_path):
    path = tmp_path / "state.json"
    newer = {
        "version": 2,
        "instances": {UUID1: {"name": "snf-101", "attempts": 1, "backoff": {"base": 30, "factor": 2}}},
        "nodes": {"node1": "boot-1"},
        "maintenance_windows": [{"node": "node2", "until": 1795260000}],
    }
    path.write_text(json.dumps(newer))
    s, problems = state.load(str(path))
    assert problems == [
        f"{path}: written by state version 2 (this is version 1): fields it added are kept unread"
    ]
    assert s.instances[UUID1].attempts == 1 and s.nodes == {"node1": "boot-1"}

    record = s.instances[UUID1]
    bumped = State({UUID1: Record(**{**record.__dict__, "attempts": 2})}, s.nodes, s.extra)
    state.save(str(path), bumped)

    written = json.loads(path.read_text())
    assert written["version"] == 1
    assert written["maintenance_windows"] == [{"node": "node2", "until": 1795260000}]
    assert written["instances"][UUID1] == {
        "name": "snf-101",
        "attempts": 2,
        "backoff": {"base": 30, "factor": 2},
    }


@pytest.mark.parametrize("cut", [1, 40, -2])
def test_a_truncated_file_loads_as_an_empty_state_with_the_parse_error(tmp_path, cut):
    path = tmp_path / "state.json"
    state.save(str(path), sample())
    path.write_bytes(path.read_bytes()[:cut])
    s, problems = state.load(str(path))
    assert s == State()
    (problem,) = problems
    assert problem.startswith(f"{path}: not valid JSON (")
    assert "line " in problem and problem.endswith("); starting from an empty state")


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b"[" * 100_000])
def test_garbage_is_reported_not_raised(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    s, (problem,) = state.load(str(path))
    assert s == State() and problem.startswith(f"{path}: not valid JSON (")


def test_a_damaged_record_is_repaired_and_named_and_the_others_are_kept(tmp_path):
    path = tmp_path / "state.json"
    data = state.to_json(sample())
    data["instances"][UUID2].update(attempts="x", gave_up=-5, last_job=True)
    data["instances"][UUID3] = ["not", "a", "record"]
    data["nodes"]["node3"] = 42
    path.write_text(json.dumps(data))
    s, problems = state.load(str(path))
    assert problems == [
        f"{path}: instances.{UUID2}.attempts: expected a non-negative integer, got 'x'; set to 0",
        f"{path}: instances.{UUID2}.last_job: expected a non-negative integer, got True; set to null",
        f"{path}: instances.{UUID2}.gave_up: expected a non-negative number (epoch seconds), got -5; "
        "set to null",
        f"{path}: instances.{UUID3}: expected an object, got an array; record dropped",
        f"{path}: nodes.node3: expected a boot id string, got 42; dropped",
    ]
    assert s.instances[UUID1] == sample().instances[UUID1]
    assert s.instances[UUID2] == Record("web1.example.org", attempts=0, first_failure=1795250000.0)
    assert s.nodes == sample().nodes


# ---------------------------------------------------------------- planted links and files


def test_a_symlink_planted_at_the_state_path_is_neither_read_nor_written_through(tmp_path):
    target = tmp_path / "shadow"
    target.write_text('{"version": 1, "instances": {}, "secret": "root:x:0:0"}')
    path = tmp_path / "state.json"
    path.symlink_to(target)

    s, problems = state.load(str(path))
    assert s == State()
    assert problems == [f"{path} is a symlink; not read (a state file is never read through a link)"]

    state.save(str(path), sample())
    assert not path.is_symlink() and path.is_file()
    assert target.read_text() == '{"version": 1, "instances": {}, "secret": "root:x:0:0"}'
    assert state.load(str(path)) == (sample(), [])


def test_a_fifo_planted_at_the_state_path_does_not_hang_the_load(tmp_path):
    path = tmp_path / "state.json"
    os.mkfifo(path)
    assert state.load(str(path)) == (
        State(),
        [f"{path}: cannot read: not a regular file; starting from an empty state"],
    )


def test_a_failed_write_leaves_no_temp_file_and_the_old_content(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()  # rename onto a directory fails after the temp file was written
    (path / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        atomicfile.write(str(path), b"new")
    assert sorted(os.listdir(tmp_path)) == ["state.json"] and os.listdir(path) == ["keep"]


def test_spool_temp_files_are_dot_files_and_never_spool_names(tmp_path, monkeypatch):
    seen = []
    real_rename = os.rename
    monkeypatch.setattr(
        os, "rename", lambda src, dst: (seen.append(os.path.basename(src)), real_rename(src, dst))
    )
    spool.write(str(tmp_path), {"type": "ganeti-net-status"})
    (tmp,) = seen
    assert tmp.startswith(".") and tmp.endswith(".tmp") and not spool.is_spool_name(tmp)


# ---------------------------------------------------------------- processes: locks and kills

HOLD = """
import time
from snf_watcher import state
fd = state.lock({path!r})
print("locked")
time.sleep(60)
"""


def test_a_second_pass_finds_the_lock_taken_and_learns_who_holds_it_since_when(tmp_path):
    path = str(tmp_path / "state.json")
    before = time.time()
    holder = child(HOLD.format(path=path))
    try:
        assert holder.stdout.readline() == "locked\n"
        after = time.time()
        with pytest.raises(lockfile.LockBusy) as busy:
            state.lock(path)
        assert busy.value.holder == str(holder.pid)
        assert before - 0.001 <= busy.value.since <= after

        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom snf_watcher import state, lockfile\n"
                "try:\n    state.lock(sys.argv[1])\n"
                "except lockfile.LockBusy as e:\n    print('busy', e.holder)\n",
                path,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.stdout == f"busy {holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_after_the_holder_is_sigkilled_the_lock_can_be_taken_again(tmp_path):
    path = str(tmp_path / "state.json")
    holder = child(HOLD.format(path=path))
    assert holder.stdout.readline().startswith("locked")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    fd = state.lock(path)
    try:
        assert Path(path + ".lock").read_text().split()[0] == str(os.getpid())
        assert not os.path.exists(path)  # the lock is a separate file; the state is untouched
    finally:
        os.close(fd)


SAVER = """
import sys
from snf_watcher import state
path, a, b = sys.argv[1:]
states = [state.load(a)[0], state.load(b)[0]]
state.save(path, states[0])
print("ready")
i = 1
while True:
    state.save(path, states[i % 2])
    i += 1
"""


def big_state(tag: str, n: int = 4000) -> State:
    return State(
        instances={
            f"{tag}-{i:06d}-0000-4000-8000-000000000000": Record(
                f"snf-{i}",
                vm_id=i,
                attempts=i % 6,
                first_failure=1795250000.0 + i,
                last_job=i * 7,
                last_job_status="error",
                extra={"note": tag * 20},
            )
            for i in range(n)
        },
        nodes={f"node{i}": f"{tag}-boot-{i}" for i in range(20)},
        extra={"written_by": tag},
    )


def kill_mid_save(saver: subprocess.Popen, lib: Path, delay: float | None) -> None:
    """SIGKILL *saver* after *delay* seconds, or (None) the moment a temp file of a save shows up."""
    if delay is not None:
        time.sleep(delay)
    else:
        deadline = time.monotonic() + 5
        while not any(n.startswith(".") for n in os.listdir(lib)) and time.monotonic() < deadline:
            pass
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    saver.stdout.close()


def test_sigkill_during_saves_always_leaves_a_whole_old_or_new_state(tmp_path):
    a, b = big_state("aaaa"), big_state("bbbb")
    state.save(str(tmp_path / "a.json"), a)
    state.save(str(tmp_path / "b.json"), b)
    lib = tmp_path / "lib"
    path = str(lib / "state.json")
    rng = random.Random(20240611)
    left_behind = []
    for delay in [rng.uniform(0, 0.15) for _ in range(4)] + [None] * 4:
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVER, path, str(tmp_path / "a.json"), str(tmp_path / "b.json")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert saver.stdout.readline() == "ready\n"
        kill_mid_save(saver, lib, delay)

        s, problems = state.load(path)
        assert problems == []
        assert s in (a, b)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        temps = [n for n in os.listdir(lib) if n not in ("state.json", "state.json.lock")]
        assert all(n.startswith(f".state.json.{saver.pid}.") and n.endswith(".tmp") for n in temps), temps
        left_behind += temps

        os.close(state.lock(path))  # the next pass to take the lock clears what the killed one left
        assert sorted(os.listdir(lib)) == ["state.json", "state.json.lock"]
    assert left_behind, "no kill landed inside a save: the test proved nothing"
