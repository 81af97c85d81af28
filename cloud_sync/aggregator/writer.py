"""The store side of ingest: validate, de-duplicate and commit one batch, and say what happened.

``BatchWriter.write`` takes the batch as it came off the wire (topic, payload, time
received) and returns an ``Outcome``: what was received, refused, stored and new. The
ingest acks and announces from the outcome, and counts it into its metrics, so the
writer runs the same in the ingest's writer thread or in a child process.

Why a process (``WriterProcess``): paho's network loop, pydantic's validation and
SQLAlchemy's statement handling all hold the GIL, so in one process they take turns.
Handed to a child over a pipe, validation and the commit run on another core while
the parent only receives, acks and announces (``s4edge bench ingest``).

The pipe carries length-prefixed frames, no pickle. Parent → child: the store's spec and
the ``WriterRules`` once (JSON: the store's URL stays out of the process list), then per
batch a JSON header line (topics, receive times, payload sizes) followed by the payloads.
Child → parent: a JSON object per outage it is retrying through (``store_error``), then
the batch's outcome.

With forward jobs on (``WriterRules.forward_kinds``, set by NG112 forwarding), the commit
that stores a new alert of those kinds writes its row in ``forward_jobs`` too, and the
outcome counts them (``Outcome.forward_jobs``), so that ingest can wake the forwarder.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from s4edge.cloud_sync.aggregator.alert_rows import AlertRows
from s4edge.cloud_sync.aggregator.redaction import first_line
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.store_url import full_disk, read_only_files, sqlite_path
from s4edge.cloud_sync.messages import (
    Alert,
    AnyMessage,
    CommandResult,
    Heartbeat,
    MessageError,
    Status,
    Telemetry,
    decode_from,
    topic_for,
)
from s4edge.cloud_sync.pipe import receive_frame, receive_spec, run_child, send_frame

log = logging.getLogger("s4edge.aggregator")

SUFFIXES = ("status", "heartbeat", "telemetry", "alert", "cmd_result")
Item = tuple[str | None, bytes, datetime]  # topic (None: not UTF-8), payload, when it was received
READY_TIMEOUT_S = 30.0  # importing, and opening the store (a PostgreSQL schema takes a lock)


@dataclass
class Batch:
    alerts: dict[str, tuple[Alert, datetime]] = field(default_factory=dict)
    alert_index: dict[str, int] = field(default_factory=dict)  # alert id → its place in the batch received
    statuses: dict[tuple[str, str], tuple[Status, datetime]] = field(default_factory=dict)
    beats: dict[tuple[str, str], tuple[Heartbeat, datetime]] = field(default_factory=dict)
    readings: dict[tuple[str, str], tuple[Telemetry, datetime]] = field(default_factory=dict)
    series: list[tuple[Telemetry, datetime]] = field(default_factory=list)  # every reading, for the trends
    results: list[tuple[CommandResult, datetime]] = field(default_factory=list)
    duplicates_in_batch: int = 0

    def add(self, message: AnyMessage, at: datetime, index: int = 0) -> None:
        key = (message.site, message.node_id)
        if isinstance(message, Alert):
            if message.id in self.alerts:
                self.duplicates_in_batch += 1  # the first copy wins, as it would across batches
            else:
                self.alerts[message.id] = (message, at)
                self.alert_index[message.id] = index
        elif isinstance(message, CommandResult):
            self.results.append((message, at))
        # Only the last status/heartbeat/telemetry per node to arrive matters: arrival order,
        # since the node's clock may be wrong or forged (a heartbeat dated 9999).
        elif isinstance(message, Status):
            self.statuses[key] = (message, at)
        elif isinstance(message, Heartbeat):
            self.beats[key] = (message, at)
        elif isinstance(message, Telemetry):
            self.readings[key] = (message, at)
            self.series.append((message, at))


@dataclass
class Outcome:
    """What one batch came to. ``new_alerts`` are the places, in the batch as received,
    of the alerts stored for the first time, oldest first; ``batch`` is the decoded batch
    when it was written in this process (a child's outcome comes without it)."""

    received: dict[str, int] = field(default_factory=dict)  # messages per topic suffix, "other" for the rest
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, topic, detail)
    stored: dict[str, int] = field(default_factory=dict)  # rows committed per message type
    duplicates: int = 0
    new_alerts: list[int] = field(default_factory=list)
    nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (site, node_id, "status" | "heartbeat")
    # (site, node_id) → ids of its alerts the store now holds, new or stored before: the receipts
    confirmed: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    forward_jobs: int = 0  # forward jobs committed with the new alerts
    batch: Batch | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "received": self.received,
                "rejects": self.rejects,
                "stored": self.stored,
                "duplicates": self.duplicates,
                "new_alerts": self.new_alerts,
                "nodes": self.nodes,
                "confirmed": [[site, node, list(ids)] for (site, node), ids in self.confirmed.items()],
                "forward_jobs": self.forward_jobs,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            received=data["received"],
            rejects=[(r[0], r[1], r[2]) for r in data["rejects"]],
            stored=data["stored"],
            duplicates=data["duplicates"],
            new_alerts=data["new_alerts"],
            nodes=[(n[0], n[1], n[2]) for n in data["nodes"]],
            confirmed={(c[0], c[1]): set(c[2]) for c in data["confirmed"]},
            forward_jobs=data["forward_jobs"],
        )


@dataclass(frozen=True)
class StoreSpec:
    """How a child process opens the same store (``make_engine``'s arguments)."""

    url: str
    schema: str | None = None
    sqlite_sync: str = "FULL"

    @property
    def shareable(self) -> bool:
        """An in-memory SQLite database lives in one process only."""
        return not (self.url.startswith("sqlite") and self.url.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://"))


@dataclass(frozen=True)
class WriterRules:
    """What the writer refuses and what it queues, alike in a thread and in a child process."""

    max_skew_s: float = 300.0  # a ts further ahead of our clock is refused: a broken clock, or a forgery
    forward_kinds: frozenset[str] | None = None  # new alerts of these kinds get a forward job in their commit

    def to_json(self) -> dict[str, Any]:
        kinds = sorted(self.forward_kinds) if self.forward_kinds is not None else None
        return {"max_skew_s": self.max_skew_s, "forward_kinds": kinds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriterRules:
        kinds = data["forward_kinds"]
        return cls(data["max_skew_s"], frozenset(kinds) if kinds is not None else None)


class BatchWriter:
    def __init__(
        self,
        store: Store,
        *,
        rules: WriterRules = WriterRules(),
        stopping: threading.Event | None = None,
        on_store_error: Callable[[str], object] = lambda reason: None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.stopping = stopping or threading.Event()
        self.on_store_error = on_store_error
        # In a writer process: a file that was read-only when SQLite first opened it stays so to
        # every later connection of the process, even once writable (its descriptors are kept
        # and reused); only a new process sees it writable (``StaleReadOnly``, ``_serve``).
        self.reopen_in_new_process = False
        self._known_nodes: set[tuple[str, str]] = set()
        self._alert_rows = AlertRows(store)

    def write(self, items: Sequence[Item]) -> Outcome | None:
        """Validate and commit; None when stopping during a store outage (nothing is then
        acked, and the broker redelivers)."""
        batch, outcome = Batch(), Outcome()
        received = outcome.received
        for index, (topic, payload, at) in enumerate(items):
            if topic is None:
                received["other"] = received.get("other", 0) + 1
                outcome.rejects.append(("bad_topic", "?", "topic is not UTF-8"))
                continue
            suffix = topic.rpartition("/")[2]
            suffix = suffix if suffix in SUFFIXES else "other"
            received[suffix] = received.get(suffix, 0) + 1
            try:
                message = decode_from(topic, payload)
            except MessageError as exc:
                outcome.rejects.append((exc.reason, topic, exc.detail))
                continue
            ahead = (message.ts - at).total_seconds()
            if ahead > self.rules.max_skew_s:
                detail = f"ts {message.ts.isoformat()} is {ahead:.0f} s ahead of our clock"
                outcome.rejects.append(("future_ts", topic, f"{detail} (allowed: {self.rules.max_skew_s:g} s)"))
                continue
            batch.add(message, at, index)
        new_ids = self._commit_with_retry(batch, outcome)
        if new_ids is None:
            return None
        outcome.duplicates += batch.duplicates_in_batch
        new = sorted(new_ids, key=lambda i: batch.alerts[i][0].ts)
        outcome.new_alerts = [batch.alert_index[i] for i in new]
        outcome.nodes = [(site, node, "status") for site, node in batch.statuses]
        outcome.nodes += [(site, node, "heartbeat") for site, node in batch.beats if (site, node) not in batch.statuses]
        outcome.batch = batch
        return outcome

    def _commit_with_retry(self, batch: Batch, outcome: Outcome) -> set[str] | None:
        delay = 0.5
        stored: set[str] = set()  # new alert ids committed one by one so far
        # Once the store refused the batch: its messages one by one, those not yet committed or
        # refused. An outage meanwhile resumes there, so nothing is written or counted twice.
        singles: list[Batch] | None = None
        while True:
            try:
                if singles is None:
                    try:
                        return self._commit(batch, outcome)
                    except DBAPIError as exc:
                        if _transient(exc):
                            raise
                        singles = _singles(batch)
                    except Exception:  # the store, or making one message's rows, refused one of them
                        singles = _singles(batch)
                return self._commit_one_by_one(singles, outcome, stored)
            except DBAPIError as exc:  # an outage, in the batch or in one of its single rows
                if not _transient(exc):
                    raise
                reason = f"{type(exc.orig).__name__}: {first_line(exc.orig)}"  # a full disk, read-only, locked
                if (full := full_disk(self.store.engine.url)) is not None:
                    reason = f"{full} ({reason})"
                log.warning("store unavailable (%s); retrying in %.1f s", reason, delay)
                self.on_store_error(reason)
                if self.reopen_in_new_process and _read_only_no_more(self.store, exc):
                    raise StaleReadOnly(f"{first_line(exc.orig)}, though the file is writable now") from None
            if self.stopping.wait(delay):
                return None
            delay = min(delay * 2, 10.0)

    def _commit(self, batch: Batch, outcome: Outcome) -> set[str]:
        keys = {(a.site, a.node_id) for a, _ in batch.alerts.values()}
        keys |= {(r.site, r.node_id) for r, _ in batch.results} | set(batch.readings)
        keys -= self._known_nodes  # node rows are never deleted: once seen, no need to ask again
        forward_kinds = self.rules.forward_kinds
        jobs: list[str] = []
        with self.store.engine.begin() as conn:
            self.store.ensure_nodes(conn, keys)
            claimed = self.store.foreign_incidents(conn, [a for a, _ in batch.alerts.values()])
            new_ids = self._alert_rows.insert(conn, [v for i, v in batch.alerts.items() if i not in claimed])
            stored_before = [a for i, (a, _) in batch.alerts.items() if i not in new_ids and i not in claimed]
            foreign = self.store.foreign_alert_ids(conn, stored_before) if stored_before else set()
            if forward_kinds is not None:
                jobs = [i for i in new_ids if batch.alerts[i][0].kind in forward_kinds]
                self.store.add_forward_jobs(conn, jobs)
            for status, at in batch.statuses.values():
                self.store.record_status(conn, status, at)
            self.store.record_heartbeats(conn, list(batch.beats.values()))
            self.store.record_telemetry_batch(conn, list(batch.readings.values()))
            self.store.record_telemetry_series(conn, batch.series)
            for result, at in batch.results:
                self.store.record_cmd_result(conn, result, at)
        self._known_nodes |= keys | set(batch.statuses) | set(batch.beats)
        for alert, _ in batch.alerts.values():  # committed: stored now, whether new or not
            if alert.id in claimed:  # not stored: its incident is another node's
                outcome.rejects.append(
                    ("incident_conflict", topic_for(alert), f"incident {alert.incident} is another node's")
                )
                continue
            if alert.id in foreign:  # the id is another node's alert: this one is not stored
                outcome.rejects.append(("id_conflict", topic_for(alert), f"alert id {alert.id} is another node's"))
                continue
            outcome.confirmed.setdefault((alert.site, alert.node_id), set()).add(alert.id)
        outcome.duplicates += len(batch.alerts) - len(new_ids) - len(foreign) - len(claimed)
        outcome.forward_jobs += len(jobs)
        for kind, count in (
            ("alert", len(new_ids)),
            ("status", len(batch.statuses)),
            ("heartbeat", len(batch.beats)),
            ("telemetry", len(batch.readings)),
            ("cmd_result", len(batch.results)),
        ):
            if count:
                outcome.stored[kind] = outcome.stored.get(kind, 0) + count
        return new_ids

    def _commit_one_by_one(self, singles: list[Batch], outcome: Outcome, new_ids: set[str]) -> set[str]:
        """The store refused the batch (not an outage): find and reject the message it refuses.
        An outage meanwhile is raised, never taken for a refusal: the row would be acked unstored.
        ``singles`` loses each message as it is committed or refused."""
        while singles:
            try:
                new_ids |= self._commit(singles[0], outcome)
            except SQLAlchemyError as exc:
                if isinstance(exc, DBAPIError) and _transient(exc):
                    raise
                outcome.rejects.append(("store_refused", "store", str(exc)[:300]))
            except Exception as exc:  # a bug in making its rows: refused alone, never stalling the rest
                log.exception("cannot make a message's rows; refused")
                outcome.rejects.append(("unstorable", "store", f"{type(exc).__name__}: {exc}"[:300]))
            singles.pop(0)
        return new_ids


def _singles(batch: Batch) -> list[Batch]:
    """The batch's messages, each in a batch of its own."""
    singles = [Batch(alerts={alert_id: pair}) for alert_id, pair in batch.alerts.items()]
    for slot, name in ((batch.statuses, "statuses"), (batch.beats, "beats"), (batch.readings, "readings")):
        for key, value in slot.items():
            single = Batch()
            getattr(single, name)[key] = value
            singles.append(single)
    singles += [Batch(series=[reading]) for reading in batch.series]
    return singles + [Batch(results=[r]) for r in batch.results]


class StaleReadOnly(RuntimeError):
    """SQLite refuses to write a file that is writable now: this process must end for a new one."""


def _read_only_no_more(store: Store, exc: DBAPIError) -> bool:
    """SQLite says read-only, and the store's file, its -wal and its -shm are writable now (a
    new process with the -shm still read-only would fail as this one does, in a loop)."""
    if not str(getattr(exc.orig, "sqlite_errorname", "")).startswith("SQLITE_READONLY"):
        return False
    path = sqlite_path(store.engine.url)
    return path is not None and path.is_file() and not read_only_files(path)


def _transient(exc: DBAPIError) -> bool:
    """An outage (connection lost, database locked) is retried; bad data is not."""
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


# -- the child process -------------------------------------------------------------------------


class WriterGone(RuntimeError):
    """The writer process exited or stopped answering; its batch was not acknowledged."""


def _encode_batch(items: Sequence[Item]) -> bytes:
    header = json.dumps(
        {
            "topics": [t for t, _, _ in items],
            "at": [a.isoformat() for _, _, a in items],
            "sizes": [len(p) for _, p, _ in items],
        }
    ).encode()
    return b"".join([header, b"\n", *(p for _, p, _ in items)])


def _decode_batch(body: bytes) -> list[Item]:
    newline = body.index(b"\n")
    header = json.loads(body[:newline])
    items: list[Item] = []
    offset = newline + 1
    for topic, at, size in zip(header["topics"], header["at"], header["sizes"], strict=True):
        items.append((topic, body[offset : offset + size], datetime.fromisoformat(at)))
        offset += size
    return items


class WriterProcess:
    """A ``BatchWriter`` in a child process; ``write`` blocks until the child answers."""

    # What the interpreter runs; a test may put a wrapper here that fails at a chosen moment.
    program: tuple[str, ...] = ("-m", "s4edge.cloud_sync.aggregator.writer")

    def __init__(
        self,
        spec: StoreSpec,
        rules: WriterRules = WriterRules(),
        on_store_error: Callable[[str], object] = lambda reason: None,
    ) -> None:
        self.spec = spec
        self.rules = rules
        self.on_store_error = on_store_error
        self.stopping = threading.Event()  # set: the next outage report ends the child
        self._child = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, *self.program], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None
        assert child.stdout is not None
        spec = {
            "url": self.spec.url,
            "schema": self.spec.schema,
            "sqlite_sync": self.spec.sqlite_sync,
            "rules": self.rules.to_json(),
        }
        with contextlib.suppress(OSError):  # a child gone already is reported below
            send_frame(child.stdin, json.dumps(spec).encode())
        ready, _, _ = select.select([child.stdout], [], [], READY_TIMEOUT_S)
        if not ready or receive_frame(child.stdout) is None:  # it answers once it has its store
            child.kill()
            code = child.wait(10)
            for stream in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            raise WriterGone(
                f"writer process did not start within {READY_TIMEOUT_S:.0f} s (exit code {code}); see its log above"
            )
        return child

    @property
    def pid(self) -> int:
        return self._child.pid

    def write(self, items: Sequence[Item]) -> Outcome | None:
        """The child's outcome; None when stopping during an outage (the child is ended).
        Raises WriterGone when the child died: start a new one with ``restart``."""
        self.submit(items)
        return self.result()

    def submit(self, items: Sequence[Item]) -> None:
        """Hand a batch over; ``result`` waits for its outcome."""
        child = self._child
        assert child.stdin is not None
        try:
            send_frame(child.stdin, _encode_batch(items))
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise WriterGone(f"writer process {child.pid} is gone ({type(exc).__name__})") from None

    def result(self) -> Outcome | None:
        child = self._child
        assert child.stdout is not None
        while True:
            body = receive_frame(child.stdout)
            if body is None:
                raise WriterGone(f"writer process {child.pid} exited ({child.poll()})")
            reply = json.loads(body)
            if "error" in reply:  # a bug met on this batch: the child lives on, the batch stays unacked
                raise RuntimeError(f"writer process: {reply['error']}")
            if "store_error" not in reply:
                return Outcome.from_json(reply)
            self.on_store_error(reply["store_error"])
            if self.stopping.is_set():
                self.kill()
                return None

    def restart(self) -> None:
        self.kill()
        self._child = self._spawn()

    def kill(self) -> None:
        self._child.kill()
        self._child.wait(10)
        self._close_pipes()

    def close(self, timeout: float = 10.0) -> None:
        """End of input: the child finishes and exits; killed if it does not."""
        try:
            if self._child.stdin is not None:
                self._child.stdin.close()
            self._child.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            self._child.kill()
            self._child.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self._child.stdin, self._child.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def relax_gc(young: int = 10_000) -> None:
    """Tune the cyclic garbage collector of a process that ingests.

    Every message allocates a few container objects (paho's message and properties, the
    decoded alert) that plain reference counting frees. The collector's default still runs
    a young-generation pass every 700 net allocations, and every hundredth pass scans the
    whole heap, each holding the GIL that paho's network thread needs. ``gc.freeze`` takes
    what is alive now (modules, the app) out of those scans. Measured with ``s4edge bench
    ingest --messages 20000 --writer process``, in A/B runs on a noisy 2-core machine:
    0.63 and 0.75 of the bare peer without it, 0.82 with it.
    The writer process holds a batch's decoded alerts until its commit: there it cut the
    writer's CPU from 28 to 24.5 µs a message (``s4edge bench ingest``, PostgreSQL).
    Process-wide, as the collector is; an aggregator calls it once it has started, a writer
    process once it has its store.
    """
    gc.freeze()
    gc.set_threshold(young, 20, 20)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    spec = receive_spec(stdin)
    if spec is None:
        return 1
    store = Store(make_engine(spec["url"], spec["schema"], spec["sqlite_sync"]))
    writer = BatchWriter(
        store,
        rules=WriterRules.from_json(spec["rules"]),
        on_store_error=lambda why: send_frame(stdout, json.dumps({"store_error": why}).encode()),
    )
    writer.reopen_in_new_process = True
    relax_gc()
    send_frame(stdout, b'{"ready": true}')
    while (body := receive_frame(stdin)) is not None:
        try:
            outcome = writer.write(_decode_batch(body))
        except StaleReadOnly as exc:  # the parent starts another writer, which writes the batch again
            log.warning("the store is writable again, but not to this process (%s); exiting for a new one", exc)
            return 75  # EX_TEMPFAIL
        except Exception as exc:  # a bug in one batch must not end the writer
            log.exception("batch failed")
            send_frame(stdout, json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}).encode())
            continue
        if outcome is None:  # only when stopping, which a child is not told: it is killed instead
            return 1
        send_frame(stdout, outcome.to_json())
    store.engine.dispose()
    return 0


if __name__ == "__main__":
    run_child("writer", _serve)
