"""snf-ganeti-eventd: Ganeti's job queue, watched with inotify, into the outbox.

Ganeti replaces a job file by rename at every change, so the queue directory
(never the files) is watched for IN_MOVED_TO (a new version) and IN_MOVED_FROM
(archived into archive/<id // 10000>/). Whatever the event, the daemon reads
the file as it is *now*, asks `jobqueue.advance` what is new since the last
report, and stores the messages with that bookkeeping in one outbox
transaction: a kill at any moment loses nothing and duplicates nothing.

On start, on becoming master and after an inotify overflow it catches up by
scanning the live queue and the archive above the high-water mark. It produces
only while ssconf says this node is the master, checked before every batch.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyinotify

from ganeti_hooks import jobqueue
from snf_watcher import DEFAULT_CONFIG, __version__, config, config_path, lockfile, logs, ssconf
from snf_watcher.delivery import DeliveryThread
from snf_watcher.messages import split_time
from snf_watcher.outbox import JobMark, JobRecord, Outbox, OutboxError

log = logging.getLogger("snf-ganeti-eventd")

HWM_INTERVAL = 10.0  # seconds between high-water-mark moves while running


# ---------------------------------------------------------------- inotify adapter


class _Wakeup(Exception):
    """Raised by a signal handler to end a wait at once."""


@dataclass
class Changes:
    job_ids: set[int] = field(default_factory=set)
    spool: bool = False
    overflow: bool = False
    lost_watches: set[int] = field(default_factory=set)  # watch descriptors the kernel dropped


class DirWatch:
    """The daemon's inotify: pyinotify sets up the watches, we read the event buffer.

    pyinotify's Notifier builds (and formats for a debug log) an object for
    every event and re-walks every move of the last minute on each batch: at
    Ganeti's rates (two renames per job-file version) that was 70% of the
    daemon's time. Reading the fd directly costs a struct unpack per event.
    """

    MASK = pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM

    def __init__(self) -> None:
        self.wm = pyinotify.WatchManager()
        self.fd = self.wm.get_fd()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        self.watched: dict[str, int] = {}
        self.waiting = False

    def watch(self, path: str) -> bool:
        if path in self.watched:
            return True
        wd = self.wm.add_watch(path, self.MASK, quiet=True).get(path, -1)
        if wd < 0:
            return False
        self.watched[path] = wd
        return True

    def forget(self, wds: set[int]) -> None:
        """Drop watches the kernel removed, so the next `watch` sets them up again."""
        self.watched = {path: wd for path, wd in self.watched.items() if wd not in wds}

    def wait(self, timeout: float) -> list[RawEvent]:
        """Events that arrived within *timeout* seconds (all that are queued, if any)."""
        self.waiting = True
        try:
            ready = self.poller.poll(int(timeout * 1000))
        except _Wakeup:
            ready = []
        finally:
            self.waiting = False
        if not ready:
            return []
        size = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        return parse_events(os.read(self.fd, max(size, 4096)))

    def close(self) -> None:
        self.wm.close()


@dataclass(frozen=True)
class RawEvent:
    wd: int
    mask: int
    name: str


_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name


def parse_events(buf: bytes) -> list[RawEvent]:
    """Split a buffer read from an inotify fd into events."""
    events, pos = [], 0
    while pos + _EVENT_HEADER.size <= len(buf):
        wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buf, pos)
        start = pos + _EVENT_HEADER.size
        name = buf[start : start + length].rstrip(b"\0")
        events.append(RawEvent(wd, mask, os.fsdecode(name)))
        pos = start + length
    return events


def classify(events: Iterable[RawEvent], watched: dict[str, int], queue_dir: str, spool_dir: str) -> Changes:
    """Which job ids changed, whether the spool got mail, whether events were lost."""
    changes = Changes()
    queue_wd, spool_wd = watched.get(queue_dir), watched.get(spool_dir)
    for ev in events:
        if ev.mask & pyinotify.IN_Q_OVERFLOW:
            changes.overflow = True
        elif ev.mask & pyinotify.IN_IGNORED:  # the directory was removed or moved away
            changes.lost_watches.add(ev.wd)
        elif ev.wd == queue_wd:
            job_id = jobqueue.job_id_from_name(ev.name)
            if job_id is not None:
                changes.job_ids.add(job_id)
        elif ev.wd == spool_wd and ev.mask & pyinotify.IN_MOVED_TO:
            changes.spool = True
    return changes


# ---------------------------------------------------------------- queue files


def scan_queue(queue_dir: str, above: int, archive: bool = True) -> list[int]:
    """Ids above *above* of every job file in the live queue and the archive dirs that can hold them."""
    ids = set()
    with os.scandir(queue_dir) as entries:
        for entry in entries:
            job_id = jobqueue.job_id_from_name(entry.name)
            if job_id is not None and job_id > above:
                ids.add(job_id)
    if archive:
        first_dir = above // jobqueue.JOBS_PER_ARCHIVE_DIR
        try:
            subdirs = [d for d in os.listdir(os.path.join(queue_dir, "archive")) if d.isdigit()]
        except FileNotFoundError:
            subdirs = []
        for sub in subdirs:
            if int(sub) < first_dir:
                continue
            with os.scandir(os.path.join(queue_dir, "archive", sub)) as entries:
                for entry in entries:
                    job_id = jobqueue.job_id_from_name(entry.name)
                    if job_id is not None and job_id > above:
                        ids.add(job_id)
    return sorted(ids)


def read_job_file(queue_dir: str, job_id: int) -> tuple[bytes, float]:
    """The job file's bytes and mtime, from the live queue or else the archive."""
    try:
        return _read(f"{queue_dir}/job-{job_id}")
    except FileNotFoundError:
        pass
    try:
        return _read(f"{queue_dir}/archive/{jobqueue.archive_subdir(job_id)}/job-{job_id}")
    except FileNotFoundError:
        raise FileNotFoundError(f"job-{job_id} is neither in the queue nor in the archive") from None


def _read(path: str) -> tuple[bytes, float]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        jobqueue.check_size(st.st_size)
        return f.read(), st.st_mtime


def initial_hwm(queue_dir: str) -> int:
    """For a new outbox: report the live jobs; the archive before them is history."""
    live = scan_queue(queue_dir, -1, archive=False)
    if live:
        return live[0] - 1
    try:
        with open(os.path.join(queue_dir, "serial")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------- the daemon


@dataclass
class Control:
    """What the signal handlers ask for; it outlives each (re)started daemon."""

    stop: bool = False
    reload: bool = False
    watch: DirWatch | None = None  # the wait a signal should cut short

    def request(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True
        if self.watch is not None and self.watch.waiting:
            raise _Wakeup()


class EventDaemon:
    def __init__(self, cfg: config.Config, outbox: Outbox, watch: DirWatch, control: Control) -> None:
        self.cfg = cfg
        self.queue_dir = os.path.abspath(cfg.ganeti.queue_dir)
        self.spool_dir = os.path.abspath(cfg.outbox.spool_dir)
        self.node_name = cfg.ganeti.node_name or socket.getfqdn()
        self.outbox = outbox
        self.watch = watch
        self.control = control
        self.master: bool | None = None  # unknown until the first check, which logs it
        self.cluster: str | None = None
        self.need_catch_up = True
        hwm = outbox.high_water_mark()
        self.hwm = hwm if hwm is not None else -1
        self.fresh = hwm is None
        self.marks: dict[int, JobMark] = outbox.job_marks()
        self.logged_problems: set[tuple[int, str]] = set()
        self.last_hwm_move = 0.0
        self.queue_missing_logged = False
        self.stored: Callable[[], None] = lambda: None  # told when new messages are in the outbox
        self.healthy: Callable[[], bool] = lambda: True  # False ends the run (the delivery thread died)

    # -------------------------------------------------------- master

    def check_master(self) -> bool:
        master = ssconf.read(self.cfg.ganeti.ssconf_dir, "master_node")
        is_master = ssconf.is_master(master, self.cfg.ganeti.node_name)
        if is_master != self.master:
            if is_master:
                self.cluster = ssconf.read(self.cfg.ganeti.ssconf_dir, "cluster_name")
                log.info("this node (%s) is the master of %s: producing events", self.node_name, self.cluster)
                self.need_catch_up = True
            else:
                log.info("this node (%s) is not the master (%s is): not producing", self.node_name, master)
        self.master = is_master
        return is_master

    # -------------------------------------------------------- job files

    def examine(self, job_id: int, counters: dict[str, int]) -> JobRecord | None:
        """What one job file adds to the outbox now, or None."""
        if job_id <= self.hwm:
            return None
        mark = self.marks.get(job_id)
        if mark is not None and mark.finished:
            return None
        try:
            data, mtime = read_job_file(self.queue_dir, job_id)
        except FileNotFoundError:
            self._problem(job_id, "vanished before it could be read", counters, "vanished_job_files")
            return None
        except OSError as e:
            return self._unreadable(job_id, mark, f"cannot read: {e.strerror}", time.time(), counters)
        except jobqueue.JobParseError as e:  # too big to read
            return self._unreadable(job_id, mark, str(e), time.time(), counters)
        try:
            job = jobqueue.parse_job(data)
        except jobqueue.JobParseError as e:
            return self._unreadable(job_id, mark, str(e), mtime, counters)
        if job.id != job_id:
            return self._unreadable(job_id, mark, f"file holds job {job.id}", mtime, counters)
        progress = jobqueue.advance(job, mark.reported if mark else None, self.cluster, split_time(mtime))
        new_mark = JobMark(
            reported=progress.reported,
            finished=job.finished,
            received=jobqueue.ts_seconds(job.received_timestamp) or mtime,
        )
        if new_mark == mark and not progress.refreshed:
            return None
        return JobRecord(job_id, new_mark, progress.new, progress.refreshed)

    def _unreadable(
        self, job_id: int, mark: JobMark | None, reason: str, when: float, counters: dict[str, int]
    ) -> JobRecord | None:
        """Remember a bad file (so the high-water mark can pass it in time) and skip it."""
        self._problem(job_id, reason, counters, "bad_job_files")
        since = mark.received if mark is not None and mark.error else when  # grace from the first failure
        bad = JobMark(reported=mark.reported if mark else (), finished=False, received=since, error=reason)
        return JobRecord(job_id, bad, [], []) if bad != mark else None

    def _problem(self, job_id: int, reason: str, counters: dict[str, int], counter: str) -> None:
        """Log a job file problem once per daemon run, and count it."""
        if (job_id, reason) in self.logged_problems:
            return
        self.logged_problems.add((job_id, reason))
        counters[counter] = counters.get(counter, 0) + 1
        log.warning("job-%d skipped: %s", job_id, reason)

    def process(self, job_ids: Iterable[int]) -> int:
        """Examine job files and store what is new, in transactions of batch_size files."""
        added = 0
        ids = [i for i in job_ids if i > self.hwm]
        size = max(1, self.cfg.eventd.batch_size)
        for start in range(0, len(ids), size):
            if self.control.stop or not self.check_master():
                break
            counters: dict[str, int] = {}
            records = [r for r in (self.examine(i, counters) for i in ids[start : start + size]) if r]
            if records or counters:
                marks = {**self.marks, **{rec.job_id: rec.mark for rec in records}}
                hwm = self.next_hwm(marks)
                added += self.outbox.store_jobs(records, counters, hwm if hwm != self.hwm else None)
                self.adopt(marks, hwm)
                self.stored()
        return added

    def catch_up(self) -> None:
        t0 = time.monotonic()
        if self.fresh:
            self.hwm = initial_hwm(self.queue_dir)
            self.outbox.set_high_water_mark(self.hwm)
            self.fresh = False
            log.info("new outbox: reporting jobs after %d (older ones are history)", self.hwm)
        above = self.hwm
        ids = scan_queue(self.queue_dir, above)
        todo = [i for i in ids if not (i in self.marks and self.marks[i].finished)]
        added = self.process(todo)
        self.move_hwm()
        log.info(
            "caught up: %d job files above %d, %d read, %d messages added in %.2fs; high-water mark %d",
            len(ids),
            above,
            len(todo),
            added,
            time.monotonic() - t0,
            self.hwm,
        )

    def next_hwm(self, marks: dict[int, JobMark]) -> int:
        return jobqueue.advance_hwm(self.hwm, marks, time.time(), self.cfg.eventd.gap_grace)

    def adopt(self, marks: dict[int, JobMark], hwm: int) -> None:
        """Take the state just committed: the marks, less those the new high-water mark passed."""
        self.marks = marks if hwm == self.hwm else {k: v for k, v in marks.items() if k > hwm}
        self.hwm = hwm

    def move_hwm(self) -> None:
        """Move the mark on its own: gaps and bad files pass with time, not with new files."""
        self.last_hwm_move = time.monotonic()
        hwm = self.next_hwm(self.marks)
        if hwm != self.hwm:
            self.outbox.set_high_water_mark(hwm)
            self.adopt(self.marks, hwm)

    def ingest_spool(self) -> None:
        added = self.outbox.ingest_spool(self.spool_dir)
        if added:
            self.stored()
            log.debug("%d hook/progress messages moved from the spool", added)

    # -------------------------------------------------------- loop

    def setup_watches(self) -> None:
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        if not self.watch.watch(self.spool_dir):
            raise OSError(f"cannot watch the spool directory {self.spool_dir}")
        if self.queue_dir not in self.watch.watched:
            if self.watch.watch(self.queue_dir):
                self.need_catch_up = True
            elif not self.queue_missing_logged:
                self.queue_missing_logged = True
                log.warning("cannot watch %s (not a Ganeti node yet?); retrying", self.queue_dir)

    def run_once(self, timeout: float) -> None:
        """One turn: master check, catch-up if due, then wait for and handle events."""
        self.setup_watches()
        self.ingest_spool()  # first: hook messages waiting since before a restart are older
        if self.check_master() and self.need_catch_up and self.queue_dir in self.watch.watched:
            self.need_catch_up = False
            self.catch_up()
        if self.control.stop:
            return
        changes = classify(self.watch.wait(timeout), self.watch.watched, self.queue_dir, self.spool_dir)
        if changes.overflow:
            log.warning("inotify queue overflowed: rescanning the job queue")
            self.need_catch_up = True
        if changes.lost_watches:
            self.watch.forget(changes.lost_watches)
            self.need_catch_up = True
        if changes.job_ids and self.master and not self.need_catch_up:
            self.process(sorted(changes.job_ids))
        if changes.spool:
            self.ingest_spool()
        if time.monotonic() - self.last_hwm_move > HWM_INTERVAL:
            self.move_hwm()

    def run(self) -> None:
        while not (self.control.stop or self.control.reload) and self.healthy():
            self.run_once(self.cfg.eventd.master_check_interval)


# ---------------------------------------------------------------- process shell


def take_lock(outbox_path: str) -> int:
    """One daemon per outbox."""
    try:
        return lockfile.take(outbox_path + ".eventd.lock")
    except lockfile.LockBusy as e:
        raise OutboxError(f"another snf-ganeti-eventd (pid {e.holder}) is using {outbox_path}") from None


def start_delivery(cfg: config.Config) -> DeliveryThread | None:
    """Deliver from the outbox in a thread of this daemon, so events reach the database at once."""
    if cfg.database.dsn is None:
        log.info("no database.dsn configured: events wait in the outbox until `snf-watcher deliver`")
        return None
    thread = DeliveryThread(cfg)
    thread.start()
    return thread


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snf-ganeti-eventd",
        description="Watch Ganeti's job queue and store Synnefo messages in the outbox. "
        "Runs in the foreground (for systemd); SIGTERM stops it, SIGHUP reloads the config.",
    )
    p.add_argument("--config", help=f"config file (default: $SNF_WATCHER_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = config_path(args.config)
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        print(f"snf-ganeti-eventd: {e}", file=sys.stderr)
        return config.EXIT_CONFIG
    os.umask(0o077)
    logs.setup(cfg.logging, "snf-ganeti-eventd", args.debug)
    control = Control()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: control.request(signum))
    while not control.stop:
        try:
            lock = take_lock(cfg.outbox.path)
            outbox = Outbox(cfg.outbox.path)
        except (OutboxError, OSError) as e:
            log.error("%s", e)
            return 1
        watch = DirWatch()
        daemon = EventDaemon(cfg, outbox, watch, control)
        log.info("started (version %s, config %s, node %s)", __version__, path, daemon.node_name)
        delivery = start_delivery(cfg)
        if delivery is not None:
            daemon.stored, daemon.healthy = delivery.wake.set, delivery.is_alive
        control.watch = watch
        unwatchable = None
        try:
            daemon.run()
        except OSError as e:  # the spool cannot be made or watched: nothing would reach the outbox
            unwatchable = e
        finally:
            control.watch = None
            if delivery is not None:
                delivery.stop()
                delivery.join()
            watch.close()
            outbox.close()
            os.close(lock)
        if unwatchable is not None:
            log.error("%s; exiting so the service manager restarts us", unwatchable)
            return 1
        if delivery is not None and not control.stop and not control.reload:
            log.error("delivery stopped (%s); exiting so the service manager restarts us", delivery.failed)
            return 1
        if control.reload:
            control.reload = False
            try:
                cfg = config.load(path)
                logs.setup(cfg.logging, "snf-ganeti-eventd", args.debug)
                log.info("configuration reloaded from %s", path)
            except config.ConfigError as e:
                log.error("reload refused, keeping the running configuration: %s", e)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
