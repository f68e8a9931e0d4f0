"""Pausing the watcher: our pause file and Ganeti's `watcher.pause`, as real files."""

from __future__ import annotations

import json
import os
import stat

import pytest

from snf_watcher import pause
from snf_watcher.pause import Pause

NOW = 1795254000.0


@pytest.fixture
def files(tmp_path):
    """(our pause file, Ganeti's pause file) paths, neither existing yet."""
    return str(tmp_path / "lib" / "pause.json"), str(tmp_path / "ganeti" / "watcher.pause")


def ganeti_pause(path: str, text: str) -> None:
    """What `gnt-cluster watcher pause` leaves: the epoch until which it holds, as text."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_no_pause_files_means_not_paused(files):
    assert pause.read(*files, now=NOW) == (None, [])


def test_our_pause_holds_until_its_end_and_then_no_more(files):
    ours, ganeti = files
    written = pause.write(ours, NOW + 1800, "kernel upgrade on node2", now=NOW)
    assert written == Pause(NOW + 1800, "kernel upgrade on node2", ours, since=NOW)
    assert pause.read(ours, ganeti, now=NOW + 1799) == (written, [])
    assert pause.read(ours, ganeti, now=NOW + 1800) == (None, [])
    assert os.path.exists(ours)  # reading never deletes


def test_our_pause_file_is_json_0600_in_a_0700_dir(files):
    ours, _ = files
    pause.write(ours, None, "until I say so", now=NOW)
    with open(ours) as f:
        assert json.load(f) == {"until": None, "reason": "until I say so", "since": NOW}
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(ours)).st_mode) == 0o700


def test_a_pause_without_end_holds_until_removed(files):
    ours, ganeti = files
    pause.write(ours, None, "maintenance", now=NOW)
    found, problems = pause.read(ours, ganeti, now=NOW + 10 * 365 * 86400)
    assert (found.until, found.reason, problems) == (None, "maintenance", [])
    assert pause.remove(ours) is True
    assert pause.read(ours, ganeti, now=NOW) == (None, [])
    assert pause.remove(ours) is False


def test_a_pause_that_ends_before_it_starts_is_refused(files):
    with pytest.raises(ValueError, match="must end after it starts"):
        pause.write(files[0], NOW - 1, "oops", now=NOW)
    assert not os.path.exists(files[0])


def test_ganetis_pause_file_pauses_us_until_its_epoch(files):
    ours, ganeti = files
    ganeti_pause(ganeti, "1795260000\n")
    found, problems = pause.read(ours, ganeti, now=NOW)
    assert problems == []
    assert (found.until, found.reason, found.source) == (1795260000.0, "gnt-cluster watcher pause", ganeti)
    assert found.since == pytest.approx(os.stat(ganeti).st_mtime)
    assert pause.read(ours, ganeti, now=1795260000.0) == (None, [])
    assert os.path.exists(ganeti)  # expired, but Ganeti's file is Ganeti's business


def test_with_both_files_in_force_the_longer_pause_is_reported(files):
    ours, ganeti = files
    ganeti_pause(ganeti, f"{int(NOW) + 7200}\n")
    pause.write(ours, NOW + 600, "short", now=NOW)
    assert pause.read(ours, ganeti, now=NOW)[0].source == ganeti
    pause.write(ours, NOW + 9000, "long", now=NOW)
    assert pause.read(ours, ganeti, now=NOW)[0].reason == "long"
    pause.write(ours, None, "open-ended", now=NOW)
    assert pause.read(ours, ganeti, now=NOW)[0].reason == "open-ended"


def test_an_expired_file_does_not_hide_the_other_ones_pause(files):
    ours, ganeti = files
    ganeti_pause(ganeti, f"{int(NOW) - 60}\n")
    pause.write(ours, NOW + 600, "ours", now=NOW - 10)
    assert pause.read(ours, ganeti, now=NOW)[0].reason == "ours"
    ganeti_pause(ganeti, f"{int(NOW) + 3600}\n")
    assert pause.read(ours, ganeti, now=NOW + 600)[0].source == ganeti
    assert pause.read(ours, ganeti, now=NOW + 3600) == (None, [])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("tomorrow\n", "expected an epoch, got b'tomorrow\\n'; ignored, not paused by it"),
        ("", "expected an epoch, got b''; ignored, not paused by it"),
        ("nan\n", "expected an epoch, got b'nan\\n'; ignored, not paused by it"),
    ],
)
def test_a_damaged_ganeti_pause_file_is_reported_and_does_not_pause(files, text, problem):
    ours, ganeti = files
    ganeti_pause(ganeti, text)
    assert pause.read(ours, ganeti, now=NOW) == (None, [f"{ganeti}: {problem}"])


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"until": 17952', "not valid JSON (Expecting"),
        ('["until", 1]', "expected an object with an 'until' key; ignored, not paused by it"),
        ('{"reason": "x"}', "expected an object with an 'until' key; ignored, not paused by it"),
        ('{"until": "soon"}', "until: expected an epoch or null, got 'soon'; ignored, not paused by it"),
        ('{"until": null, "reason": 5}', "reason: expected a string, got 5; ignored, not paused by it"),
    ],
)
def test_a_damaged_pause_file_of_ours_is_reported_and_the_other_file_still_counts(files, content, problem):
    ours, ganeti = files
    os.makedirs(os.path.dirname(ours))
    with open(ours, "w") as f:
        f.write(content)
    assert pause.read(ours, ganeti, now=NOW)[0] is None
    ganeti_pause(ganeti, f"{int(NOW) + 60}\n")
    found, (reported,) = pause.read(ours, ganeti, now=NOW)
    assert found.source == ganeti
    assert reported.startswith(f"{ours}: {problem}")


def test_a_symlink_planted_at_a_pause_path_is_not_followed(files, tmp_path):
    ours, ganeti = files
    target = tmp_path / "elsewhere"
    target.write_text('{"until": null, "reason": "planted"}')
    os.makedirs(os.path.dirname(ours))
    os.symlink(target, ours)
    found, problems = pause.read(ours, ganeti, now=NOW)
    assert found is None
    assert problems == [f"{ours} is a symlink; not read (a pause file is never read through a link)"]
    pause.write(ours, NOW + 60, "real", now=NOW)
    assert not os.path.islink(ours) and target.read_text() == '{"until": null, "reason": "planted"}'


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        (" 1D2h ", 93600),
        ("1.5h", 5400),
    ],
)
def test_durations(text, seconds):
    assert pause.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "2x", "30m1h", "1h1h", "-5m", "1 h", "1h 30m", "inf"])
def test_bad_durations_say_what_is_expected(text):
    with pytest.raises(ValueError) as e:
        pause.parse_duration(text)
    assert str(e.value) == (
        f"{text!r} is not a duration: use numbers with units d, h, m, s, largest first, "
        "e.g. 90s, 30m, 2h, 1d, 1h30m"
    )


def test_a_zero_duration_is_refused():
    with pytest.raises(ValueError, match="'0m' is not a duration: it must be longer than 0 seconds"):
        pause.parse_duration("0m")


@pytest.mark.parametrize("text", ["36601d", "9" * 400 + "d"])
def test_a_pause_longer_than_a_century_is_refused_with_the_way_to_pause_for_good(text):
    with pytest.raises(ValueError, match="is longer than 100 years: leave out --for to pause until resumed"):
        pause.parse_duration(text)
    assert pause.parse_duration("36500d") == 36500 * 86400
