"""The outbox: a durable, ordered store of messages waiting for the database.

One SQLite file (standard library, WAL, synchronous=FULL). Producers add rows
in transactions together with their own bookkeeping (which job statuses were
reported, the job high-water mark), so a crash at any point leaves either all
of a change or none of it. The delivery side reads rows in `seq` order and
deletes them only after the database committed them (`ack`).

Short-lived writers (hooks, progress monitor) do not open this file; they
write to the spool directory (see spool.py), and `ingest_spool` moves those
files in here.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from snf_watcher import spool

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SPOOL_MEMORY = 7 * 24 * 3600  # how long an ingested spool name is remembered

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,        -- op:<job>:<op>:<status> or spool:<file name>
    kind TEXT NOT NULL,              -- the message's "type"
    subject TEXT,                    -- instance or network name
    body TEXT NOT NULL,              -- the message, JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (    -- jobs above the high-water mark
    job_id INTEGER PRIMARY KEY,
    reported TEXT NOT NULL,          -- per op, highest status rank reported (comma list)
    finished INTEGER NOT NULL,       -- every op final and reported
    received REAL,                   -- the job's receipt (or file mtime), master clock
    error TEXT                       -- why the last read of its file failed
);
CREATE TABLE IF NOT EXISTS spooled (name TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead (     -- messages the database can never apply, kept for an operator
    seq INTEGER PRIMARY KEY,         -- the seq it had in the outbox
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    error TEXT NOT NULL,             -- why it cannot apply
    failed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or is not ours."""


@dataclass(frozen=True)
class Entry:
    seq: int
    key: str
    kind: str
    subject: str | None
    message: dict[str, Any]
    created: float


@dataclass(frozen=True)
class DeadLetter:
    entry: Entry
    error: str
    failed: float


@dataclass(frozen=True)
class JobMark:
    """What the outbox remembers of one job above the high-water mark."""

    reported: tuple[int, ...]
    finished: bool
    received: float | None
    error: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job's change, stored in one transaction with its messages."""

    job_id: int
    mark: JobMark
    new: list[tuple[str, dict[str, Any]]]
    refreshed: list[tuple[str, dict[str, Any]]]


def _subject(message: dict[str, Any]) -> str | None:
    return message.get("instance") or message.get("network")


def _mark_row(rec: JobRecord) -> tuple[object, ...]:
    m = rec.mark
    return (rec.job_id, ",".join(map(str, m.reported)), int(m.finished), m.received, m.error)


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class Outbox:
    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            old = os.umask(0o077)
            try:
                self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            finally:
                os.umask(old)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                version = self._meta("schema_version")
                if version is None:
                    self._set_meta("schema_version", str(SCHEMA_VERSION))
                elif int(version) > SCHEMA_VERSION:
                    raise OutboxError(
                        f"{path}: outbox schema version {version} is newer than this program's "
                        f"({SCHEMA_VERSION}); upgrade snf-watcher"
                    )
        except sqlite3.DatabaseError as e:
            raise OutboxError(f"{path}: cannot open outbox: {e}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front, so no transaction dies half-way."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ meta

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def high_water_mark(self) -> int | None:
        """Every job at or below it was fully reported; None before the first catch-up."""
        value = self._meta("job_hwm")
        return int(value) if value is not None else None

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters ORDER BY name"))

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter; call inside a transaction to keep it with the change it counts."""
        self.db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    # ------------------------------------------------------------ job bookkeeping

    def job_marks(self) -> dict[int, JobMark]:
        rows = self.db.execute("SELECT job_id, reported, finished, received, error FROM jobs")
        return {
            job_id: JobMark(
                reported=tuple(int(r) for r in reported.split(",")) if reported else (),
                finished=bool(finished),
                received=received,
                error=error,
            )
            for job_id, reported, finished, received, error in rows
        }

    def store_jobs(
        self, records: Iterable[JobRecord], counters: dict[str, int] | None = None, hwm: int | None = None
    ) -> int:
        """Store job changes and their messages in one transaction; return rows added.

        With *hwm*, the high-water mark moves in the same transaction, and the
        jobs at or below it are forgotten (or, new ones, never written).
        """
        records = list(records)
        now = time.time()
        new = [(key, msg["type"], _subject(msg), _dumps(msg), now) for rec in records for key, msg in rec.new]
        refreshed = [(_dumps(msg), key) for rec in records for key, msg in rec.refreshed]
        marks = [_mark_row(r) for r in records if hwm is None or r.job_id > hwm]
        with self.transaction() as db:
            added = db.executemany(
                "INSERT OR IGNORE INTO outbox(key, kind, subject, body, created) VALUES (?, ?, ?, ?, ?)", new
            ).rowcount
            db.executemany("UPDATE outbox SET body = ? WHERE key = ?", refreshed)
            db.executemany(
                "INSERT INTO jobs(job_id, reported, finished, received, error) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "reported = excluded.reported, finished = excluded.finished, "
                "received = excluded.received, error = excluded.error",
                marks,
            )
            for name, n in (counters or {}).items():
                self.count(name, n)
            if hwm is not None:
                self._set_meta("job_hwm", str(hwm))
                db.execute("DELETE FROM jobs WHERE job_id <= ?", (hwm,))
        return max(added, 0)

    def set_high_water_mark(self, hwm: int) -> None:
        """Move the mark and forget the jobs at or below it: they are done for good."""
        self.store_jobs([], hwm=hwm)

    # ------------------------------------------------------------ spool

    def ingest_spool(self, spool_dir: str) -> int:
        """Move every message file of the spool into the outbox; return how many were added.

        Names are remembered for a week, so a file left behind by a crash
        between commit and unlink is not added twice.
        """
        names = spool.names(spool_dir, before_ns=time.time_ns())
        if not names:
            return 0
        taken, bad, added = [], [], 0
        now = time.time()
        with self.transaction() as db:
            for name in names:
                path = os.path.join(spool_dir, name)
                try:
                    message = spool.read(path)
                except FileNotFoundError:
                    continue  # another ingester took it
                except (OSError, ValueError) as e:
                    bad.append((name, str(e)))
                    continue
                taken.append(path)
                seen = db.execute("SELECT 1 FROM spooled WHERE name = ?", (name,)).fetchone()
                if seen:
                    continue
                db.execute("INSERT INTO spooled(name, at) VALUES (?, ?)", (name, now))
                db.execute(
                    "INSERT INTO outbox(key, kind, subject, body, created) VALUES (?, ?, ?, ?, ?)",
                    ("spool:" + name, message["type"], _subject(message), _dumps(message), now),
                )
                added += 1
            if bad:
                self.count("bad_spool_files", len(bad))
            db.execute("DELETE FROM spooled WHERE at < ?", (now - SPOOL_MEMORY,))
        for path in taken:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for name, _ in bad:  # keep them for inspection, out of the way
            try:
                os.rename(os.path.join(spool_dir, name), os.path.join(spool_dir, "." + name + ".bad"))
            except OSError:
                pass
        for name, reason in bad:
            log.error("spool file %s skipped (kept as .%s.bad): %s", name, name, reason)
        return added

    # ------------------------------------------------------------ consumer side

    def pending(self, limit: int | None = None) -> list[Entry]:
        sql = "SELECT seq, key, kind, subject, body, created FROM outbox ORDER BY seq"
        rows = self.db.execute(sql + " LIMIT ?", (limit,)) if limit else self.db.execute(sql)
        return [Entry(s, k, kind, subj, json.loads(body), c) for s, k, kind, subj, body, c in rows]

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def ack(self, seqs: Iterable[int]) -> None:
        """Forget delivered messages; call only after the database committed them."""
        self.settle(seqs, [], {})

    def settle(self, done: Iterable[int], dead: list[tuple[int, str]], counters: dict[str, int]) -> None:
        """After a database commit: forget what was delivered, set aside what never can be."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO dead (seq, key, kind, subject, body, created, error, failed) "
                "SELECT seq, key, kind, subject, body, created, ?, ? FROM outbox WHERE seq = ?",
                ((error, now, seq) for seq, error in dead),
            )
            db.executemany("DELETE FROM outbox WHERE seq = ?", ((s,) for s in [*done, *(s for s, _ in dead)]))
            for name, n in counters.items():
                if n:
                    self.count(name, n)

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        sql = "SELECT seq, key, kind, subject, body, created, error, failed FROM dead ORDER BY seq"
        rows = self.db.execute(sql + " LIMIT ?", (limit,)) if limit else self.db.execute(sql)
        return [
            DeadLetter(Entry(seq, key, kind, subj, json.loads(body), created), error, failed)
            for seq, key, kind, subj, body, created, error, failed in rows
        ]

    def dead_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM dead").fetchone()[0]

    def requeue(self, seqs: Iterable[int] | None = None) -> int:
        """Put dead letters (all, or these) back at the end of the outbox; return how many moved."""
        with self.transaction() as db:
            if seqs is None:
                chosen = [row[0] for row in db.execute("SELECT seq FROM dead ORDER BY seq")]
            else:
                chosen = sorted(set(seqs))
            moved = 0
            for seq in chosen:
                moved += db.execute(
                    "INSERT OR IGNORE INTO outbox (key, kind, subject, body, created) "
                    "SELECT key, kind, subject, body, created FROM dead WHERE seq = ?",
                    (seq,),
                ).rowcount
                db.execute("DELETE FROM dead WHERE seq = ?", (seq,))
        return moved
