"""The node's store-and-forward queue (docs/architecture.md, "Delivery guarantees").

Every outbound message that must not be lost goes into SQLite first. ``put`` returns
only after the row is committed with ``synchronous=FULL`` in WAL mode, i.e. after the
WAL is fsynced, so SIGKILL or a power cut cannot lose it. A row leaves through ``ack``,
which the forwarder calls once the broker has acknowledged the publish, or, when it was
put with a ``receipt_id`` (an alert), only through ``confirm``: the broker's PUBACK then
just marks it in flight until a time to send it again (``mark_in_flight``), and the
aggregator's receipt naming that id, sent after its commit, deletes it. The in-flight
marks are rows on disk, so they outlive a restart.

Throughput comes from group commit: one writer thread commits every operation that is
waiting at that moment in a single transaction (one fsync) and then releases all their
callers. Alerts are never evicted; telemetry is bounded, oldest first, and the number
dropped is persisted.

The outbox also owns the node's ``seq`` counter, which must stay monotonic across restarts,
and the set of command ids already executed (replay guard).

A node stopped cleanly leaves no WAL or shared-memory file, and SQLite must create both to
open the outbox again: on a disk with no byte left it cannot (``disk I/O error``,
SQLITE_IOERR_SHMSIZE), and the node would not start. So the outbox keeps ``RESERVE_BYTES``
in a file beside it (``outbox.db.reserve``), gives that space up to open on a full disk, and
takes it back once a commit finds room for it twice over.

Telemetry that cannot be stored (a full disk) is dropped and counted with the evicted: in
memory at once, and on disk with the next commit that goes through.

``read_backlog`` reads what an outbox holds, and when the broker and the aggregator last took
something from it, without its writer and without changing it (``s4edge agent status``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

TELEMETRY: Final = "telemetry"
# seq values are reserved durably in blocks, so handing one out costs no fsync;
# a restart skips the rest of the block, which keeps seq monotonic (with gaps).
SEQ_BLOCK: Final = 1000
RESERVE_BYTES: Final = 512 * 1024  # room to create the WAL and shared memory on a full disk, and then some
SEEN_COMMANDS_KEPT: Final = 4096  # executed commands' ids kept past their expiry (about 0.3 MB)
RESERVE_RETRY_S: Final = 5.0  # how often a commit tries to take the reserve back while it is given up
# The room a disk must have before the reserve is written again: twice the reserve, so that as
# much stays for the outbox's writes. With just the reserve's own room, taking it back refilled
# the disk that giving it up had just freed, and commits failed again at every retry.
RESERVE_TAKE_BACK_BYTES: Final = 2 * RESERVE_BYTES
# Counters stamped (UNIX seconds) in the commit of an ack or in-flight mark (the broker took a
# stored message: its PUBACK, or for QoS 0 its write to the connection) and of a receipt's
# delete: a technician reads them while the node is offline, its agent running or not.
PUBLISHED_AT: Final = "published_at"
RECEIPT_AT: Final = "receipt_at"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_command (id TEXT PRIMARY KEY, until REAL NOT NULL);
"""
# Added for receipts; an outbox written before them gets the columns when it is opened.
# receipt_id: the message id a receipt will name (NULL: the row goes at PUBACK);
# resend_at: UNIX time an in-flight row is sent again (NULL: not yet acknowledged by the broker).
_RECEIPT_COLUMNS = {"receipt_id": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0", "resend_at": "REAL"}
_RECEIPT_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_receipt ON outbox (receipt_id) WHERE receipt_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_resend ON outbox (resend_at) WHERE resend_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE resend_at IS NULL;
"""
# The WAL is checkpointed (its pages copied into the database) every this many pages, and
# then cut back to this many bytes: SQLite's 1000 pages, about 24 KiB per alert committed
# alone, let a backlog's WAL fill a small partition before anything was copied back.
WAL_CHECKPOINT_PAGES: Final = 256
WAL_KEEP_BYTES: Final = 1024 * 1024
_COLUMNS = "id, topic, payload, qos, retain, kind, receipt_id, attempts"


def _is_io_error(error: BaseException) -> bool:
    """SQLITE_IOERR: among others a write past a file-size limit (RLIMIT_FSIZE), or a short disk."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR


def is_disk_full(error: BaseException | None) -> bool:
    """SQLITE_FULL (the primary result code is the low byte of an extended one), or ENOSPC."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    code = getattr(error, "sqlite_errorcode", None)  # absent on an error not raised by SQLite itself
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL


class OutboxClosed(RuntimeError):
    """The outbox was closed; nothing more can be stored."""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    receipt_id: str | None = None
    attempts: int = 0  # how often the broker acknowledged it without a receipt following


Write = Callable[[sqlite3.Connection], Any]


@dataclass
class Operation:
    """One write, committed in the writer's next group; ``done`` once it is, or failed (``error``)."""

    write: Write
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Outbox:
    """SQLite store-and-forward. Thread-safe; ``put`` is durable when it returns."""

    def __init__(self, path: Path | str, telemetry_max: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.telemetry_max = telemetry_max
        self.reserve = self.path.with_name(f"{self.path.name}.reserve")
        # the room a missing reserve waits for: its own as the outbox is made, twice it after
        self._reserve_room = RESERVE_BYTES if not self.path.exists() else RESERVE_TAKE_BACK_BYTES
        self._failure: BaseException | None = None  # ``failure``
        self._probed = float("-inf")
        try:
            self._open()
        except sqlite3.OperationalError:
            if not self._disk_full() or not self._give_up_reserve():
                raise
            self._open()  # on the reserve's room
        self._reserve_tried = float("-inf")
        self._failure = self._space_fault()
        self._read_lock = threading.Lock()
        # telemetry that could not be stored (``put`` failed), counted on disk with the next commit
        self._unstored_drops = 0
        self._drops_lock = threading.Lock()  # held across that commit: ``dropped`` never counts one twice
        counters = dict(self._reader_db.execute("SELECT name, value FROM counter").fetchall())
        self._seq: int = counters.get("seq_reserved", 0)
        self._seq_reserved: int = self._seq
        self._reserving: Operation | None = None
        self._marking: Operation | None = None  # the last mark_in_flight, which ``due`` reads after
        self._queue: list[Operation] = []
        self._queue_cond = threading.Condition()
        self._put_event = threading.Event()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    def writing(self) -> bool:
        """The writer thread is running: every put, ack and receipt waits on it."""
        return self._writer.is_alive()

    def _open(self) -> None:
        self._writer_db = self._connect()
        try:
            self._writer_db.executescript(_SCHEMA)
            _add_receipt_columns(self._writer_db)
            self._reader_db = self._connect()
        except sqlite3.Error:
            self._writer_db.close()
            raise

    def _room(self) -> int:
        """Bytes left on the outbox's disk for an unprivileged writer."""
        stats = os.statvfs(self.path.parent)
        return stats.f_bavail * stats.f_frsize

    def _disk_full(self) -> bool:
        """Less room left on the outbox's disk than its reserve holds."""
        return self._room() < RESERVE_BYTES

    def _give_up_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        return True

    @property
    def failure(self) -> BaseException | None:
        """The last commit's error, or a full disk (less room than the reserve holds) after the
        last commit; None otherwise. The node reports it (``disk_full``). While the disk is
        full, asking has the writer look again at most every ``RESERVE_RETRY_S`` (a commit of
        nothing): a node that stores nothing meanwhile learns all the same that room is back."""
        failure = self._failure
        if is_disk_full(failure) and time.monotonic() - self._probed >= RESERVE_RETRY_S:
            self._probed = time.monotonic()
            with contextlib.suppress(OutboxClosed):
                self._submit(lambda db: None)
        return failure

    def _space_fault(self) -> OSError | None:
        """After a commit: take the reserve back if it was given up, once the disk has room
        for it twice over (``RESERVE_TAKE_BACK_BYTES``; its WAL cut back first, at most every
        ``RESERVE_RETRY_S``); less room on the disk than the reserve holds is a full disk,
        though commits still find room (in the WAL, or in what the reserve gave up)."""
        room = self._room()
        if not self.reserve.exists():
            if time.monotonic() - self._reserve_tried >= RESERVE_RETRY_S:
                self._reserve_tried = time.monotonic()
                # the WAL grew into the room the reserve gave up, and never shrinks by itself
                with contextlib.suppress(sqlite3.Error):
                    self._writer_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                room = self._room()
            if room >= self._reserve_room:
                self._take_back_reserve()
                room = self._room()
        if room >= RESERVE_BYTES:
            return None
        where = "the outbox runs on its reserve" if not self.reserve.exists() else "the next write may fail"
        return OSError(errno.ENOSPC, f"no space left on the disk: {where} ({self.reserve.name})")

    def _take_back_reserve(self) -> None:
        """Write the missing reserve file; on a disk without room for it, nothing (tried again
        after a later commit)."""
        partial = self.reserve.with_name(f"{self.reserve.name}.new")
        try:
            with open(partial, "wb") as file:
                file.write(bytes(RESERVE_BYTES))
                file.flush()
                os.fsync(file.fileno())
            partial.rename(self.reserve)
        except OSError:
            partial.unlink(missing_ok=True)
        else:
            self._reserve_room = RESERVE_TAKE_BACK_BYTES

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so a committed put survives power loss.
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        except sqlite3.Error:
            db.close()
            raise
        return db

    # -- writing -------------------------------------------------------------------

    def _submit(self, write: Write) -> Operation:
        op = Operation(write)
        with self._queue_cond:
            if self._closing:
                raise OutboxClosed(f"{self.path} is closed")
            self._queue.append(op)
            self._queue_cond.notify()
        return op

    def _write_loop(self) -> None:
        while True:
            with self._queue_cond:
                while not self._queue and not self._closing:
                    self._queue_cond.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closing:
                    return
            self._commit(batch)

    def _commit(self, batch: list[Operation]) -> None:
        try:
            self._transaction(batch)
        except BaseException as exc:  # every waiter must learn that its write is not durable
            for op in batch:
                op.error = exc
            self._failure = exc
            if is_disk_full(exc) or _is_io_error(exc):
                # room for the next writes: the receipts' deletes and the in-flight marks, which
                # their writers send again, let the outbox shrink; without, a full disk stopped
                # them all for good, across restarts
                self._make_room()
        if all(op.error is None for op in batch):
            try:
                self._failure = self._space_fault()
            except OSError as exc:  # the disk unreadable (its folder gone, EIO): a fault, and the commit stands
                self._failure = exc
        for op in batch:
            op.done.set()
        self._put_event.set()

    def _transaction(self, batch: list[Operation]) -> None:
        db = self._writer_db
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                op.result = op.write(db)
            self._evict_telemetry(db)
            with self._drops_lock:
                unstored = self._unstored_drops
                if unstored:
                    _add_counter(db, "telemetry_dropped", unstored)
                db.execute("COMMIT")
                self._unstored_drops -= unstored
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a failing disk may fail this too: the writer lives on
                    db.execute("ROLLBACK")
            raise

    def _make_room(self) -> None:
        """A commit failed for want of room (a full disk, a file-size limit): give up the
        reserve, and copy the WAL back into the database and cut it (the reserve's room lets
        the database grow by what the WAL holds)."""
        self._give_up_reserve()
        with contextlib.suppress(sqlite3.Error):
            self._writer_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _evict_telemetry(self, db: sqlite3.Connection) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM outbox WHERE kind = ?", (TELEMETRY,)).fetchone()
        surplus = count - self.telemetry_max
        if surplus > 0:
            db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT ?)",
                (TELEMETRY, surplus),
            )
            _add_counter(db, "telemetry_dropped", surplus)

    def _allocate_seq(self) -> tuple[int, Operation | None]:
        """Take the next seq; must be called with the queue lock held."""
        failed = self._reserving is not None and self._reserving.done.is_set() and self._reserving.error is not None
        if failed:
            self._seq_reserved = self._seq  # that block never reached the disk: reserve again
        seq = self._seq
        self._seq += 1
        if seq >= self._seq_reserved:
            self._seq_reserved = seq + SEQ_BLOCK
            reserved = self._seq_reserved
            self._reserving = self._submit(lambda db: _set_counter(db, "seq_reserved", reserved))
        return seq, self._reserving

    def next_seq(self, durable: bool = True) -> int:
        """The node's next message ``seq``; never repeats, even across restarts.

        ``durable=False`` is for a message that is never stored (heartbeat, status) when
        the disk is full: it does not wait for the seq's block to be reserved on disk, so
        a restart before space returns may hand out the same seq again."""
        with self._queue_cond:
            seq, reserving = self._allocate_seq()
        if durable and reserving is not None:
            reserving.wait()
        return seq

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        kind: str = "alert",
        retain: bool = False,
        receipt_id: str | None = None,
    ) -> int:
        """Store one message; returns its row id once it is on disk. With ``receipt_id`` it
        stays until a receipt names that id (``confirm``), not just until its PUBACK."""
        return self._stored(self._submit(_insert(topic, payload, qos, kind, retain, receipt_id)), kind)

    def put_next(
        self,
        topic: str,
        make: Callable[[int], bytes],
        qos: int = 1,
        kind: str = "alert",
        retain: bool = False,
        receipt_id: str | None = None,
    ) -> int:
        """Stamp the next ``seq`` (``make(seq)`` returns the payload) and store it.

        Seq allocation and queueing happen under one lock, so rows are stored in seq
        order and the forwarder sends them in seq order."""
        with self._queue_cond:
            seq, reserving = self._allocate_seq()
            write = _insert(topic, make(seq), qos, kind, retain, receipt_id)
            if reserving is not None and not (reserving.done.is_set() and reserving.error is None):
                # The seq's block is not on disk yet, and the batch writing it may fail while
                # this row's commits: the row carries the reservation, so that no stored seq
                # is ever beyond the counter a restart starts from.
                write = _reserving(self._seq_reserved, write)
            op = self._submit(write)
        return self._stored(op, kind)

    def _stored(self, op: Operation, kind: str) -> int:
        """The row id of a put once it is on disk; telemetry that cannot be stored (a full disk)
        is dropped, and counted as dropped, before the error is raised."""
        try:
            return int(op.wait())
        except BaseException:
            if kind == TELEMETRY:
                with self._drops_lock:
                    self._unstored_drops += 1
            raise

    def ack(self, row_ids: Iterable[int], wait: bool = True) -> None:
        """Delete rows the broker has acknowledged (PUBACK). With ``wait=False`` the delete
        commits in the next group: losing it in a crash only means a duplicate send."""
        ids = [(row_id,) for row_id in row_ids]
        if ids:
            op = self._submit(_stamped(PUBLISHED_AT, _each("DELETE FROM outbox WHERE id = ?", ids)))
            if wait:
                op.wait()

    def mark_in_flight(self, marks: Iterable[tuple[int, int, float]], wait: bool = True) -> Operation | None:
        """Rows awaiting a receipt that the broker acknowledged: (row id, attempts, UNIX time
        to send it again). A mark lost in a crash only means an earlier resend. Returns the
        write (None for no marks): without ``wait``, its ``error`` says whether it failed."""
        rows = [(attempts, resend_at, row_id) for row_id, attempts, resend_at in marks]
        if not rows:
            return None
        op = self._submit(
            _stamped(PUBLISHED_AT, _each("UPDATE outbox SET attempts = ?, resend_at = ? WHERE id = ?", rows))
        )
        self._marking = op
        if wait:
            op.wait()
        return op

    def confirm(self, receipt_ids: Iterable[str], wait: bool = True) -> None:
        """Delete the rows a receipt names; ids of no row (confirmed before, or never ours)
        change nothing. A delete lost in a crash only means a resend and another receipt."""
        ids = [(receipt_id,) for receipt_id in receipt_ids]
        if ids:
            op = self._submit(_stamped(RECEIPT_AT, _each("DELETE FROM outbox WHERE receipt_id = ?", ids)))
            if wait:
                op.wait()

    def remember_command(self, command_id: str, until: float) -> bool:
        """Record a command id until ``until`` (UNIX time); False if it was seen before.

        An expired id is forgotten only once ``SEEN_COMMANDS_KEPT`` newer ones are kept: a
        board without a battery-backed clock boots in the past, where an expired command is
        valid again, and a replay of it must still find its id (the clock alone let it run twice)."""

        def write(db: sqlite3.Connection) -> bool:
            db.execute(
                "DELETE FROM seen_command WHERE until < ? AND rowid IN (SELECT rowid FROM seen_command "
                "ORDER BY until LIMIT max(0, (SELECT count(*) FROM seen_command) - ?))",
                (time.time(), SEEN_COMMANDS_KEPT),
            )
            inserted = db.execute("INSERT OR IGNORE INTO seen_command (id, until) VALUES (?, ?)", (command_id, until))
            return inserted.rowcount == 1

        return bool(self._submit(write).wait())

    # -- reading -------------------------------------------------------------------

    def pending(self, limit: int = 100, after: int = 0) -> list[Row]:
        """Rows not in flight with id greater than ``after``, oldest first."""
        with self._read_lock:
            rows = self._reader_db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id > ? AND resend_at IS NULL ORDER BY id LIMIT ?",  # noqa: S608
                (after, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def due(self, now: float, horizon: float, limit: int = 100) -> list[Row]:
        """Rows in flight whose time to be sent again has come, oldest first (of the ``limit``
        longest due). One marked
        further than ``horizon`` ahead is due as well: the clock was set back since (a board
        without a battery-backed clock boots in the past), and it must not wait for years.

        Read after the last ``mark_in_flight`` is on disk: a row marked just before must not
        look due on an older snapshot, or it would be sent again at once."""
        marking = self._marking
        if marking is not None:
            marking.done.wait()
        # Two reads on the resend index (an OR of both, ordered by id, scanned the whole table:
        # a backlog of 200,000 rows kept an idle node's core busy)
        query = f"SELECT {_COLUMNS} FROM outbox WHERE resend_at {{}} ? ORDER BY resend_at LIMIT ?"  # noqa: S608
        with self._read_lock:
            rows = self._reader_db.execute(query.format("<="), (now, limit)).fetchall()
            rows += self._reader_db.execute(query.format(">"), (now + horizon, limit)).fetchall()
        return sorted((_row(r) for r in rows), key=lambda row: row.id)[:limit]

    def depth(self) -> int:
        with self._read_lock:
            (count,) = self._reader_db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def unsent(self) -> int:
        """Rows the broker has not acknowledged yet (in flight ones are on their way)."""
        with self._read_lock:
            (count,) = self._reader_db.execute("SELECT COUNT(*) FROM outbox WHERE resend_at IS NULL").fetchone()
        return int(count)

    def dropped(self) -> int:
        """Telemetry dropped since the outbox was created: rows evicted to keep the bound, and
        messages that could not be stored (those on disk only once a commit goes through)."""
        with self._drops_lock, self._read_lock:
            row = self._reader_db.execute("SELECT value FROM counter WHERE name = 'telemetry_dropped'").fetchone()
            return (int(row[0]) if row else 0) + self._unstored_drops

    def wait_for_put(self, timeout: float) -> bool:
        """Block until something was committed (or timeout); used by the forwarder to sleep."""
        fired = self._put_event.wait(timeout)
        self._put_event.clear()
        return fired

    def close(self) -> None:
        with self._queue_cond:
            self._closing = True
            self._queue_cond.notify()
        self._writer.join()
        self._writer_db.close()
        with self._read_lock:
            self._reader_db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _insert(topic: str, payload: bytes, qos: int, kind: str, retain: bool, receipt_id: str | None) -> Write:
    def write(db: sqlite3.Connection) -> int | None:
        cursor = db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, kind, receipt_id) VALUES (?, ?, ?, ?, ?, ?)",
            (topic, payload, qos, int(retain), kind, receipt_id),
        )
        return cursor.lastrowid

    return write


def _row(r: tuple[Any, ...]) -> Row:
    return Row(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7])


def _add_receipt_columns(db: sqlite3.Connection) -> None:
    """Bring an outbox from before receipts up to date. Its alerts were stored without a
    receipt id: their message id is taken from the payload, so they too wait for a receipt."""
    present = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    missing = [name for name in _RECEIPT_COLUMNS if name not in present]
    if missing:
        db.execute("BEGIN IMMEDIATE")
        for name in missing:
            db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {_RECEIPT_COLUMNS[name]}")
        if "receipt_id" in missing:
            db.execute(
                "UPDATE outbox SET receipt_id = json_extract(CAST(payload AS TEXT), '$.id')"
                " WHERE kind = 'alert' AND json_valid(CAST(payload AS TEXT))"
            )
        db.execute("COMMIT")
    db.executescript(_RECEIPT_INDEXES)


def _each(sql: str, rows: list[tuple[Any, ...]]) -> Write:
    """``sql`` once per row. The cursor is closed here, in the writer's thread: kept as the
    operation's result, it was dropped in whichever thread let go of the operation last (a
    reader waiting on the last mark), and its statement, the connection's cached one, was
    reset there while the writer ran it again: InterfaceError, "bad parameter or other API
    misuse", and the batch with it failed."""

    def write(db: sqlite3.Connection) -> None:
        db.executemany(sql, rows).close()

    return write


def _reserving(reserved: int, write: Write) -> Write:
    def both(db: sqlite3.Connection) -> Any:
        _set_counter(db, "seq_reserved", reserved)
        return write(db)

    return both


def _stamped(counter: str, write: Write) -> Write:
    """``write``, and now (UNIX seconds, when it was asked for) in ``counter``, in one commit."""
    at = int(time.time())

    def both(db: sqlite3.Connection) -> Any:
        _set_counter(db, counter, at)
        return write(db)

    return both


def _set_counter(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute(
        "INSERT INTO counter (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def _add_counter(db: sqlite3.Connection, name: str, delta: int) -> None:
    db.execute(
        "INSERT INTO counter (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (name, delta, delta),
    )


@dataclass(frozen=True)
class Backlog:
    """What an outbox holds, and when it last got through (``read_backlog``)."""

    queued: dict[str, int]  # rows by kind: alert, telemetry, cmd_result
    alerts_in_flight: int  # alerts the broker took, waiting for the aggregator's receipt
    oldest_alert: datetime | None  # the ``ts`` of the oldest alert queued
    telemetry_dropped: int
    published_at: datetime | None  # ``PUBLISHED_AT``; None: never, or not since an agent stamps it
    receipt_at: datetime | None  # ``RECEIPT_AT``


class NotAnOutbox(sqlite3.DatabaseError):
    """A file that is not an s4edge outbox (another SQLite database, or no database at all)."""


def read_backlog(path: Path) -> Backlog:
    """Read the outbox at ``path`` without its writer: no lock taken, nothing written, no file
    created, whether an agent runs on it or not. Raises OSError when the file cannot be opened
    (FileNotFoundError: there is none), ``NotAnOutbox``, or sqlite3.Error."""
    with open(path, "rb"):  # its own error (no such file, permission denied): SQLite says only "unable to open"
        pass
    # mode=ro on a WAL database with no -wal file (an outbox whose agent stopped cleanly) creates
    # the -wal and -shm files, owned by the reader: root's, under sudo, and the agent's user could
    # not open its outbox again. Without a -wal file every commit is in the database file, which
    # immutable=1 reads with no lock and no file (https://www.sqlite.org/uri.html, "immutable").
    wal = path.with_name(f"{path.name}-wal")
    uri = f"{path.absolute().as_uri()}?mode=ro{'' if wal.exists() else '&immutable=1'}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")  # every figure from one snapshot
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        except sqlite3.DatabaseError as exc:  # "file is not a database"
            raise NotAnOutbox(str(exc)) from None
        if not columns:
            raise NotAnOutbox("it holds no outbox table")
        queued = dict(db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        in_flight = 0
        if "resend_at" in columns:  # an outbox from before receipts has none (``_add_receipt_columns``)
            (in_flight,) = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE kind = 'alert' AND resend_at IS NOT NULL"
            ).fetchone()
        oldest = db.execute(
            "SELECT json_extract(CAST(payload AS TEXT), '$.ts') FROM outbox"
            " WHERE kind = 'alert' AND json_valid(CAST(payload AS TEXT)) ORDER BY id LIMIT 1"
        ).fetchone()
        counters = dict(db.execute("SELECT name, value FROM counter").fetchall())
    finally:
        db.close()
    return Backlog(
        queued=queued,
        alerts_in_flight=int(in_flight),
        oldest_alert=_utc(oldest[0]) if oldest else None,
        telemetry_dropped=int(counters.get("telemetry_dropped", 0)),
        published_at=_from_unix(counters.get(PUBLISHED_AT)),
        receipt_at=_from_unix(counters.get(RECEIPT_AT)),
    )


def _utc(ts: object) -> datetime | None:
    """A message's ``ts`` (ISO 8601, UTC), or None for what no agent wrote."""
    try:
        return datetime.fromisoformat(str(ts)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _from_unix(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
