"""Properties of the pure parsers: whatever the input, a result or a specific error."""

from __future__ import annotations

import json

from conftest import job_versions
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ganeti_hooks.jobqueue import Job, JobParseError, parse_job
from ganeti_hooks.progress import decode_stream

REAL = job_versions(8)[-1]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def parses_or_raises_parse_error(data: bytes) -> None:
    try:
        result = parse_job(data)
    except JobParseError as e:
        assert str(e)  # the reason is never empty
        return
    assert isinstance(result, Job)


@settings(max_examples=600)
@given(st.binary(max_size=400))
@example(REAL)
@example(REAL[:-1])
@example(b"\x00" + REAL)
def test_any_bytes_give_a_job_or_a_job_parse_error(data):
    parses_or_raises_parse_error(data)


@settings(max_examples=400)
@given(st.integers(0, len(REAL) - 1), st.binary(min_size=1, max_size=4))
def test_a_real_job_file_with_corrupted_bytes_gives_a_job_or_a_parse_error(at, junk):
    parses_or_raises_parse_error(REAL[:at] + junk + REAL[at + len(junk) :])


@settings(max_examples=400)
@given(json_values)
def test_any_json_document_gives_a_job_or_a_parse_error(doc):
    parses_or_raises_parse_error(json.dumps(doc).encode())


@settings(max_examples=300)
@given(st.sampled_from(sorted({"id", "ops", "received_timestamp", "end_timestamp"})), json_values)
def test_any_value_in_a_job_field_gives_a_job_or_a_parse_error(field, value):
    doc = json.loads(REAL)
    doc[field] = value
    parses_or_raises_parse_error(json.dumps(doc).encode())


@settings(max_examples=1000)
@given(
    st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), min_size=1, max_size=6),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_progress_stream_split_anywhere_yields_the_same_objects(objects, cuts):
    stream = "".join(json.dumps(o) for o in objects)
    rest, got, errors = "", [], []
    points = sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]
    start = 0
    for point in points:
        objs, errs, rest = decode_stream(rest + stream[start:point], final=point == len(stream))
        got += objs
        errors += errs
        start = point
    assert errors == []
    assert got == objects
