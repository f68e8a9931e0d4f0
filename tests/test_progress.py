"""snf-progress-monitor: snf-image's stream in, progress messages out, never stopping early."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import command

from ganeti_hooks.progress import decode_stream, to_messages
from snf_watcher.outbox import Outbox

STREAM = (
    b'{"type": "image-info", "messages": ["Starting image copy..."]}'
    b'{"type": "image-copy-progress", "position": 1048576, "total": 4194304, "progress": 25.0}\n'
    b'{"type": "image-helper", "subtype": "task-start", "task": "FixPartitionTable"}'
    b'{"type": "image-copy-progress", "position": 4194304, "total": 4194304, "progress": 100.0}'
)


def test_decode_stream_reports_garbage_and_resynchronises():
    objects, errors, rest = decode_stream('{"a": 1} oops {"b": 2}', final=True)
    assert objects == [{"a": 1}, {"b": 2}] and rest == ""
    assert len(errors) == 1 and "oops" in errors[0]


def test_decode_stream_keeps_a_cut_object_for_the_next_chunk():
    objects, errors, rest = decode_stream('{"a": 1}{"b": "hal', final=False)
    assert (objects, errors, rest) == ([{"a": 1}], [], '{"b": "hal')
    _, errors, _ = decode_stream(rest, final=True)
    assert errors and "Unterminated string" in errors[0]


def test_unknown_types_and_non_objects_are_refused_by_name():
    msgs, errors = to_messages(
        "snf-1", [{"type": "image-copy-progress", "progress": 5}, {"type": "x"}, [1]], 10.5
    )
    assert msgs == [
        {"type": "image-copy-progress", "progress": 5, "instance": "snf-1", "event_time": [10, 500000]}
    ]
    assert errors == ["unknown progress message type 'x'", "not an object: [1]"]


@pytest.mark.parametrize("chunked", [False, True])
def test_the_monitor_stores_each_progress_message_with_instance_and_time(make_config, tmp_path, chunked):
    config = make_config()
    proc = subprocess.Popen(
        [command("snf-progress-monitor"), "--config", config, "snf-101"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if chunked:  # byte by byte, as a slow pipe would deliver it
        for i in range(len(STREAM)):
            proc.stdin.write(STREAM[i : i + 1])
            proc.stdin.flush()
        proc.stdin.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=60)
    else:
        _, stderr = proc.communicate(STREAM + b"garbage", timeout=60)
    assert proc.returncode == 0
    box = Outbox(str(tmp_path / "outbox.sqlite"))
    assert box.ingest_spool(str(tmp_path / "spool")) == 4
    msgs = [e.message for e in box.pending()]
    assert [m["type"] for m in msgs] == [
        "image-info",
        "image-copy-progress",
        "image-helper",
        "image-copy-progress",
    ]
    assert [m.get("progress") for m in msgs] == [None, 25.0, None, 100.0]
    assert all(m["instance"] == "snf-101" and len(m["event_time"]) == 2 for m in msgs)
    assert b"4 progress messages stored" in stderr


def test_the_monitor_reads_to_the_end_even_when_it_cannot_store(make_config, tmp_path):
    config = make_config(outbox={"spool_dir": str(tmp_path / "not-a-dir")})
    (tmp_path / "not-a-dir").write_text("x")
    big = STREAM * 2000  # more than a pipe buffer: stopping early would block the writer
    proc = subprocess.run(
        [command("snf-progress-monitor"), "--config", config, "snf-101"],
        input=big,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert b"cannot store progress message" in proc.stderr
    assert json.loads(STREAM[: STREAM.index(b"}") + 1])["type"] == "image-info"
