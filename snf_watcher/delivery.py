"""Delivery: drain the outbox into Synnefo's database, batch by batch.

A batch is read from the outbox in seq order, parsed (events.py), applied in
one database transaction (syncdb.py) and only then settled in the outbox:
delivered and skipped messages are forgotten, the ones that can never apply
move to the dead letters. A crash between the database commit and the
settling redelivers the batch, which changes nothing the second time: every
aspect of a row remembers the order key that last wrote it.

When the database is down, delivery waits with a doubling backoff and logs
one line when the outage starts and one when it ends; messages keep waiting
in the outbox meanwhile, nothing is dropped.

`Delivery` is used by snf-ganeti-eventd (in a thread, woken whenever new
messages are stored) and by `snf-watcher deliver` (once, until empty).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from snf_watcher import events, lockfile
from snf_watcher.config import Config
from snf_watcher.messages import describe
from snf_watcher.outbox import Outbox, OutboxError
from snf_watcher.syncdb import Database, DatabaseDown, safe_dsn

log = logging.getLogger("snf-watcher.delivery")


@dataclass
class Totals:
    delivered: int = 0
    skipped: int = 0
    dead: int = 0
    batches: int = 0

    def add(self, other: Totals) -> None:
        self.delivered += other.delivered
        self.skipped += other.skipped
        self.dead += other.dead
        self.batches += other.batches


@dataclass
class Outage:
    """When the database went away, and how long to wait before the next try."""

    max_wait: float
    since: float | None = None
    wait: float = 0.0
    attempts: int = 0

    def failed(self, error: str, now: float, pending: int) -> float:
        """Record a failed attempt; return the seconds to wait. Logs only the first failure."""
        self.attempts += 1
        if self.since is None:
            self.since = now
            log.error(
                "database unavailable: %s; %d messages wait in the outbox, retrying with backoff",
                error,
                pending,
            )
            self.wait = 1.0
        else:
            self.wait = min(self.wait * 2, self.max_wait)
        return self.wait

    def recovered(self, now: float, pending: int) -> None:
        if self.since is not None:
            log.warning(
                "database available again after %.0f s (%d failed attempts); delivering %d waiting messages",
                now - self.since,
                self.attempts,
                pending,
            )
        self.since, self.wait, self.attempts = None, 0.0, 0

    @property
    def down(self) -> bool:
        return self.since is not None


class Delivery:
    def __init__(self, cfg: Config, outbox: Outbox, database: Database | None = None) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.db = database or Database(cfg.database)
        self.outage = Outage(cfg.database.max_retry_interval)

    def close(self) -> None:
        self.db.close()

    def batch(self) -> Totals | None:
        """Deliver one batch; None when nothing is pending. Raises DatabaseDown."""
        entries = self.outbox.pending(self.cfg.database.batch_size)
        if not entries:
            return None
        seq_of: dict[int, int] = {}
        batch = []
        done: list[int] = []
        dead: list[tuple[int, str]] = []
        skipped = 0
        for entry in entries:
            try:
                ev = events.parse(entry.message, self.cfg.instance_prefix)
            except events.BadMessage as e:
                dead.append((entry.seq, f"bad message: {e}"))
                log.error("dead letter %d (%s): bad message: %s", entry.seq, describe(entry.message), e)
                continue
            if isinstance(ev, events.Skip):
                done.append(entry.seq)
                skipped += 1
                log.info("skipped %s: %s", describe(entry.message), ev.reason)
                continue
            seq_of[id(ev)] = entry.seq
            batch.append(ev)
        result = self.db.apply(batch)
        if self.outage.down:
            self.outage.recovered(time.time(), self.outbox.pending_count())
        by_seq = {e.seq: e for e in entries}
        for ev in result.applied:
            done.append(seq_of[id(ev)])
        for ev, why in result.skipped:
            done.append(seq_of[id(ev)])
            log.info("skipped %s: %s", describe(by_seq[seq_of[id(ev)]].message), why)
        for ev, why in result.dead:
            seq = seq_of[id(ev)]
            dead.append((seq, why))
            log.error("dead letter %d (%s): %s", seq, describe(by_seq[seq].message), why)
        totals = Totals(len(result.applied), skipped + len(result.skipped), len(dead), batches=1)
        self.outbox.settle(
            done,
            dead,
            {"delivered": totals.delivered, "skipped": totals.skipped, "dead_letters": totals.dead},
        )
        return totals

    def drain(self, should_stop: Callable[[], bool] = lambda: False) -> Totals:
        """Deliver until the outbox is empty (or asked to stop). Raises DatabaseDown.

        Connects even when nothing is pending, so a run from cron also tells
        whether the database can be reached.
        """
        self.db.connect()
        totals = Totals()
        while not should_stop():
            got = self.batch()
            if got is None:
                break
            totals.add(got)
        return totals


# ---------------------------------------------------------------- one deliverer per outbox


class DeliveryBusy(Exception):
    """Another process delivers from this outbox."""


def take_delivery_lock(outbox_path: str) -> int:
    """One deliverer per outbox at a time: two would only fight over the same rows."""
    try:
        return lockfile.take(outbox_path + ".deliver.lock")
    except lockfile.LockBusy as e:
        raise DeliveryBusy(f"another process (pid {e.holder}) is delivering from {outbox_path}") from None


@dataclass
class Flushed:
    totals: Totals
    seconds: float
    pending: int
    dead_letters: int


def flush(cfg: Config) -> Flushed:
    """Move the spool into the outbox and deliver all that is pending, as a one-shot run.

    Raises DeliveryBusy when eventd (or another run) delivers already, and
    DatabaseDown, with what waits in the outbox, when the database cannot be reached.
    """
    lock = take_delivery_lock(cfg.outbox.path)
    box = Outbox(cfg.outbox.path)
    worker = Delivery(cfg, box)
    try:
        box.ingest_spool(cfg.outbox.spool_dir)
        t0 = time.monotonic()
        try:
            totals = worker.drain()
        except DatabaseDown as e:
            raise DatabaseDown(
                f"database {safe_dsn(cfg.database.dsn or '')}: {e}; {box.pending_count()} messages wait "
                "in the outbox"
            ) from None
        return Flushed(totals, time.monotonic() - t0, box.pending_count(), box.dead_count())
    finally:
        worker.close()
        box.close()
        os.close(lock)


class DeliveryThread(threading.Thread):
    """snf-ganeti-eventd's deliverer: sleeps until woken (or a second passes), then drains."""

    IDLE = 1.0  # seconds between looks at the outbox when nobody wakes us

    def __init__(self, cfg: Config) -> None:
        super().__init__(name="delivery", daemon=True)
        self.cfg = cfg
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.failed: BaseException | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 -- reported by the daemon, which then exits non-zero
            self.failed = e
            log.exception("delivery stopped by an unexpected error")

    def _lock(self) -> int | None:
        """The delivery lock, waiting while `snf-watcher deliver` holds it (None: asked to stop)."""
        logged = False
        while not self.stopping.is_set():
            try:
                return take_delivery_lock(self.cfg.outbox.path)
            except DeliveryBusy as e:
                if not logged:
                    log.warning("%s; waiting for it to finish", e)
                    logged = True
                self.stopping.wait(self.IDLE)
        return None

    def _run(self) -> None:
        lock = self._lock()
        if lock is None:
            return
        outbox = Outbox(self.cfg.outbox.path)
        delivery = Delivery(self.cfg, outbox)
        dsn = safe_dsn(self.cfg.database.dsn or "")
        log.info("delivering to %s (backend %s)", dsn, self.cfg.database.backend_id)
        try:
            while not self.stopping.is_set():
                try:
                    delivery.drain(self.stopping.is_set)
                except DatabaseDown as e:
                    # back off; new messages are no reason to hammer a server that is down
                    self.stopping.wait(delivery.outage.failed(str(e), time.time(), outbox.pending_count()))
                    continue
                except OutboxError as e:
                    log.error("%s", e)
                    self.stopping.wait(self.IDLE)
                    continue
                self.wake.wait(self.IDLE)
                self.wake.clear()
        finally:
            delivery.close()
            outbox.close()
            os.close(lock)
