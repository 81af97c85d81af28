"""Ingest in several processes: ``aggregator run --workers N``.

One ``Ingest`` runs on one core: paho's network thread, the acks and the hand-over to the
writer all take turns on one GIL (``s4edge bench ingest``). With ``workers`` > 1 the aggregator
runs no ingest itself. It starts N worker processes (``python -m
s4edge.cloud_sync.aggregator.workers``), each an ``Ingest`` with its own MQTT client in one MQTT 5
shared-subscription group (``$share/<group>/…``), all committing to the same store, and the
broker hands each message to one of them. The parent keeps the HTTP API, the live stream, the
commands and the NG112 forwarder.

Why that is safe: a worker commits before it acknowledges, the store keeps an alert once by its
id, and each worker sends the receipts for what it committed. A worker that dies leaves what it
had not acknowledged in its persistent session; the parent starts it again under the same
client id (``<client_id>-w<i>``) and the broker delivers those messages again. Alerts it had
committed come back as duplicates, dropped and confirmed again.

The pipe speaks length-prefixed JSON frames (``cloud_sync/pipe.py``, no pickle):

- parent → worker: the spec, once (broker and credentials, client id, group, store, rules: on
  the pipe, not in argv, since they may hold passwords); ``{"connect": true}`` once the parent
  wants it to take messages; ``{"live": bool}`` when the live stream gains its first watcher or
  loses its last; ``{"publish": {...}}`` for a command to a node. The end of its stdin (or
  SIGTERM) means stop: commit and acknowledge what has arrived, disconnect (the session
  stays), report, exit.
- worker → parent: ``{"loaded": true}`` with its store and writer open, then ``{"ready": …}``
  once connected or ``{"failed": why}``; then ``{"event": name, "data": …}`` for the live
  stream (only while someone watches), ``{"jobs": true}`` after a commit that wrote forward jobs
  (the parent wakes its forwarder), ``{"state": …}`` (metrics, store failure, connection) after
  each batch, at most every ``REPORT_MIN_S``, and at least every ``REPORT_EVERY_S``, and
  ``{"published": id, "ok": bool}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from s4edge.cloud_sync.aggregator.broker import BrokerConfig, BrokerError
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.ingest import Ingest
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics, WorkerTotals, snapshot, snapshot_from_json
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.store_url import store_url
from s4edge.cloud_sync.aggregator.writer import (
    Item,
    Outcome,
    StaleReadOnly,
    StoreSpec,
    WriterGone,
    WriterRules,
    relax_gc,
)
from s4edge.cloud_sync.pipe import receive_frame, receive_spec, run_child, send_frame

log = logging.getLogger("s4edge.aggregator")

LOAD_TIMEOUT_S = 60.0  # importing, opening the store, starting a writer process
REPORT_MIN_S = 0.02  # a busy worker reports its counts at most this often
REPORT_EVERY_S = 1.0  # and an idle one this often (its connection, a store outage)
LIVE_POLL_S = 0.25  # how often the parent looks whether anyone watches the live stream
RESTART_PAUSE_S = 1.0  # before starting a dead worker again; doubles while starts fail, up to
RESTART_PAUSE_MAX_S = 30.0
# A worker that stopped cleanly (exit 0) was told to by SIGTERM: systemd's stop, or a terminal's
# kill, reaches every process of the service, the parent too, which then takes this long at most
# (its HTTP server, forwarder) before it says it is stopping. Not logged as an error, nor started
# again, unless the parent goes on.
SIGNALLED_GRACE_S = 15.0


class WorkersError(ValueError):
    """A configuration that workers cannot run with."""


def default_workers(db_url: str) -> int:
    """``aggregator run``'s default: one per core on PostgreSQL, which takes commits from many
    connections at once. Two on SQLite (one on a single core): two measured better than one
    (``s4edge bench ingest --workers 1,2``: 1.48 of the bare subscriber against 1.03 on two
    cores), and more would queue on its one write lock."""
    cores = os.cpu_count() or 1
    if store_url(db_url).get_backend_name() == "postgresql":
        return cores
    return min(2, cores)


def one_identity(broker: BrokerConfig) -> bool:
    """Every worker would sign in as the same user (a username or certificate without
    ``{worker}``): on a broker that makes the username the client id (the fleet's), they would
    take each other's session over."""
    user = broker.credentials()[0]
    return bool(user and "{worker}" not in user) or bool(broker.cert_file and "{worker}" not in broker.cert_file)


def worker_client_id(client_id: str, index: int) -> str:
    suffix = f"-w{index}"
    return client_id[: 64 - len(suffix)] + suffix


def default_group(client_id: str) -> str:
    """The shared-subscription group the workers took before it was drawn at random and kept in
    the store (``Store.share_group``): named after the client id, which a node could guess."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", client_id)[:64] or "s4edge-aggregator"


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is told; ``client_id`` and the credentials are made per worker."""

    broker: BrokerConfig
    store: StoreSpec
    client_id: str
    group: str
    writer_process: bool = True
    session_expiry_s: int = 86400
    batch_max: int = 500
    rules: WriterRules = field(default_factory=WriterRules)
    receipts: bool = True
    retired_group: str | None = None  # a group the workers' sessions may still hold: left at connect

    def for_worker(self, index: int, live: bool) -> dict[str, Any]:
        # ``{worker}`` in the username or the certificate's file names: one broker identity per worker
        return {
            "broker": dataclasses.asdict(self.broker.for_worker(index)),
            "store": dataclasses.asdict(self.store),
            "client_id": worker_client_id(self.client_id, index),
            "group": self.group,
            "retired_group": self.retired_group,
            "writer_process": self.writer_process,
            "session_expiry_s": self.session_expiry_s,
            "batch_max": self.batch_max,
            "rules": self.rules.to_json(),
            "receipts": self.receipts,
            "live": live,
            "log_level": logging.getLogger("s4edge").getEffectiveLevel(),
        }


class IngestWorkers:
    """The parent's side: ``Ingest``'s interface (start, stop, connected, store_failure,
    publish, forward_jobs), carried out by worker processes."""

    # What the interpreter runs; a test may put a wrapper here.
    program: tuple[str, ...] = ("-m", "s4edge.cloud_sync.aggregator.workers")

    def __init__(self, spec: WorkerSpec, count: int, metrics: IngestMetrics, events: EventBus | None = None) -> None:
        if count < 1:
            raise WorkersError("workers: at least 1")
        if not spec.store.shareable:
            raise WorkersError("workers need a store that other processes can open, not an in-memory SQLite one")
        self.spec = spec
        self.metrics = metrics
        self.events = events
        self.totals = WorkerTotals()
        metrics.count_workers(self.totals)
        self.on_jobs: Callable[[], object] | None = None
        self.workers = [_Worker(self, index) for index in range(count)]
        self._stopping = threading.Event()
        self._started = False
        self._live = False
        self._watch: threading.Thread | None = None
        self._publish_lock = threading.Lock()
        self._next_publish = 0
        self._answers: dict[int, tuple[threading.Event, list[bool]]] = {}

    # -- Ingest's interface ---------------------------------------------------------------------

    def forward_jobs(self, kinds: frozenset[str], on_jobs: Callable[[], object] | None = None) -> None:
        if any(worker.process is not None for worker in self.workers):
            raise RuntimeError("set forward jobs before the workers start")
        self.spec = replace(self.spec, rules=replace(self.spec.rules, forward_kinds=kinds))
        self.on_jobs = on_jobs

    def open_writer(self) -> None:
        """Start every worker process and wait until each has its store and writer open (``start``
        does it too); they take no message before ``start``."""
        self._stopping.clear()
        waiting = [worker for worker in self.workers if worker.process is None]
        for worker in waiting:
            worker.spawn()
        failures = [why for worker in waiting if (why := worker.await_frame("loaded", LOAD_TIMEOUT_S))]
        if failures:
            self.stop()
            raise BrokerError(f"an ingest worker did not start: {failures[0]}")

    def start(self, timeout: float = 10.0) -> None:
        self.open_writer()
        for worker in self.workers:
            worker.send({"connect": True})
        failures = [why for worker in self.workers if (why := worker.await_frame("ready", timeout + 5))]
        if failures:
            self.stop()
            hint = " (ingest workers speak MQTT 5, for its shared subscriptions)" if "CONNACK" in failures[0] else ""
            raise BrokerError(failures[0] + hint)
        for worker in self.workers:
            worker.follow()
        self._started = True
        self._watch = threading.Thread(target=self._watch_live, name="aggregator-workers-live", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        """Each worker commits and acknowledges what has arrived, then exits."""
        self._stopping.set()
        for worker in self.workers:
            worker.close_input()
        for worker in self.workers:
            worker.wait()
        if self._watch is not None:
            self._watch.join(5)
            self._watch = None
        self._started = False

    @property
    def connected(self) -> bool:
        """Every worker is connected (one down means its share of the fleet waits for it)."""
        return self._started and all(worker.connected for worker in self.workers)

    @property
    def store_failure(self) -> str | None:
        return next((worker.store_failure for worker in self.workers if worker.store_failure), None)

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 5.0) -> bool:
        """Publish (commands) through a connected worker; True once the broker has it."""
        with self._publish_lock:
            ready = [worker for worker in self.workers if worker.connected]
            if not ready:
                return False
            self._next_publish += 1
            request, worker = self._next_publish, ready[self._next_publish % len(ready)]
            answered: tuple[threading.Event, list[bool]] = (threading.Event(), [])
            self._answers[request] = answered
        try:
            # Commands are JSON text (``messages.encode``), so the frame carries them as such.
            worker.send({"publish": {"id": request, "topic": topic, "payload": payload.decode(), "qos": qos}})
            return answered[0].wait(timeout + 1) and answered[1] == [True]
        finally:
            with self._publish_lock:
                self._answers.pop(request, None)

    # -- from the workers ------------------------------------------------------------------------

    def handle(self, worker: _Worker, message: dict[str, Any]) -> None:
        """One frame from a worker, in that worker's reader thread."""
        if "state" in message:
            state = message["state"]
            self.totals.update(worker.index, snapshot_from_json(state["metrics"]))
            worker.connected = bool(state["connected"])
            worker.store_failure = state["store_failure"]
            worker.finished_at = state["finished_at"]
        elif "event" in message:
            if self.events is not None:
                self.events.publish(message["event"], message["data"])
        elif "jobs" in message:
            if self.on_jobs is not None:
                self.on_jobs()
        elif "live" in message:
            worker.live = bool(message["live"])
        elif "published" in message:
            with self._publish_lock:
                answered = self._answers.get(message["published"])
            if answered is not None:
                answered[1].append(bool(message["ok"]))
                answered[0].set()

    @property
    def live(self) -> bool:
        return self._live

    def _watch_live(self) -> None:
        """The workers build live records only while someone watches the stream."""
        while not self._stopping.wait(LIVE_POLL_S):
            live = self.events is not None and self.events.subscribers > 0
            if live != self._live:
                self._live = live
                for worker in self.workers:
                    worker.send({"live": live})

    @property
    def finished_at(self) -> float:
        """When the latest batch was finished, by ``time.monotonic`` (one clock for all processes)."""
        return max(worker.finished_at for worker in self.workers)


class _Worker:
    """One worker process, as the parent sees it; started again when it dies."""

    def __init__(self, parent: IngestWorkers, index: int) -> None:
        self.parent = parent
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.connected = False
        self.store_failure: str | None = None
        self.live = False  # it builds live records: confirmed by the worker
        self.finished_at = 0.0
        self.restarts = 0
        self._stdin = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def spawn(self) -> None:
        process = subprocess.Popen(
            [sys.executable, *self.parent.program], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        with self._stdin:
            self.process = process
        self.connected, self.store_failure, self.live = False, None, self.parent.live
        self.send(self.parent.spec.for_worker(self.index, self.live))

    def send(self, message: dict[str, Any]) -> None:
        """From any thread; a worker gone meanwhile misses it (its successor is told afresh)."""
        with self._stdin:
            process = self.process
            if process is None or process.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                send_frame(process.stdin, json.dumps(message).encode())

    def await_frame(self, expected: str, timeout: float) -> str | None:
        """Read frames until ``expected``; None then, else why it failed (the process is ended)."""
        process = self.process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(left, 0))
            body = receive_frame(process.stdout) if ready else None
            message = json.loads(body) if body is not None else {}
            if expected in message:
                if expected == "ready":
                    self.connected = True
                return None
            if "failed" in message or body is None:
                why = message.get("failed") or (
                    f"worker {self.index} exited (code {process.poll()}); see its log above"
                    if ready
                    else f"worker {self.index} did not answer within {timeout:.0f} s"
                )
                self.end()
                return str(why)
            self.parent.handle(self, message)

    def follow(self) -> None:
        self._reader = threading.Thread(target=self._read, name=f"aggregator-worker-{self.index}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stopping = self.parent._stopping
        pause = RESTART_PAUSE_S
        while True:
            process = self.process
            assert process is not None and process.stdout is not None
            while (body := receive_frame(process.stdout)) is not None:
                self.parent.handle(self, json.loads(body))
            code = process.wait()
            self.connected = False
            if stopping.is_set() or (code == 0 and stopping.wait(SIGNALLED_GRACE_S)):
                return
            self.parent.totals.retire(self.index)  # its counts so far stay in the sums
            log.error("ingest worker %d (pid %d) exited (code %s); starting another", self.index, process.pid, code)
            while not stopping.wait(pause):
                if self._restart():
                    pause = RESTART_PAUSE_S
                    break
                pause = min(pause * 2, RESTART_PAUSE_MAX_S)
            if stopping.is_set():
                self.end()
                return

    def _restart(self) -> bool:
        self.end()
        try:
            self.spawn()
        except OSError as exc:
            log.error("ingest worker %d could not be started: %s", self.index, exc)
            return False
        why = self.await_frame("loaded", LOAD_TIMEOUT_S)
        if why is None:
            self.send({"connect": True})
            why = self.await_frame("ready", 15.0)
        if why is not None:
            log.error("ingest worker %d did not start again: %s", self.index, why)
            return False
        self.restarts += 1
        self.parent.metrics.worker_restarts.inc()
        log.info("ingest worker %d started again (pid %s)", self.index, self.pid)
        return True

    def close_input(self) -> None:
        with self._stdin:
            process = self.process
            if process is not None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()

    def wait(self, timeout: float = 40.0) -> None:
        """After ``close_input``: it commits what it holds (a store outage: up to 30 s), then exits."""
        process = self.process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ingest worker %d did not stop in time; killed (the broker redelivers)", self.index)
                process.kill()
                process.wait(10)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(10)
            self._reader = None
        self.end()

    def end(self) -> None:
        """Make sure the process is gone and its pipes closed."""
        with self._stdin:
            process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# -- the worker process ------------------------------------------------------------------------


class _Out:
    """Frames to the parent, from the writer, reporter and command threads alike."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, default=str, separators=(",", ":")).encode()
        with self.lock:
            send_frame(self.stream, body)


class PipeEvents(EventBus):
    """The live stream as a worker sees it: events go to the parent, and only while someone
    watches there (building an alert's live record costs as much as storing it)."""

    def __init__(self, out: _Out, live: bool) -> None:
        super().__init__()
        self.out = out
        self.live = live

    @property
    def subscribers(self) -> int:
        return 1 if self.live else 0

    def publish(self, event: str, data: dict[str, Any]) -> None:
        if self.live:
            self.out.send({"event": event, "data": data})


class _Reporter:
    """Sends the worker's counts, connection and store state after each batch (at most every
    ``REPORT_MIN_S``) and at least every ``REPORT_EVERY_S``."""

    def __init__(self, out: _Out, ingest: Ingest) -> None:
        self.out = out
        self.ingest = ingest
        self.finished_at = 0.0
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aggregator-worker-report", daemon=True)

    def poke(self) -> None:
        """A batch is finished (``Ingest.on_progress``, in its writer thread)."""
        self.finished_at = time.monotonic()
        self._poked.set()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._poked.wait(REPORT_EVERY_S)
            self._poked.clear()
            self.report()
            self._stopping.wait(REPORT_MIN_S)

    def report(self) -> None:
        ingest = self.ingest
        state = {
            "metrics": snapshot(ingest.metrics),
            "store_failure": ingest.store_failure,
            "connected": ingest.connected,
            "finished_at": self.finished_at,
        }
        with contextlib.suppress(OSError, ValueError):  # the parent is gone: stdin ends too
            self.out.send({"state": state})

    def stop(self) -> None:
        self._stopping.set()
        self._poked.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.report()  # the last word: what the batches finished at stop came to


class _Stop(Exception):
    """SIGTERM: stop as at the end of input."""


def _raise_stop(*_: object) -> None:
    raise _Stop


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    spec = receive_spec(stdin)
    if spec is None:
        return 1
    out = _Out(stdout)
    store_spec = StoreSpec(**spec["store"])
    store = Store(make_engine(store_spec.url, store_spec.schema, store_spec.sqlite_sync))
    ingest = Ingest(
        BrokerConfig(**spec["broker"]),
        store,
        IngestMetrics(),
        client_id=spec["client_id"],
        group=spec["group"],
        retired_group=spec.get("retired_group"),
        session_expiry_s=spec["session_expiry_s"],
        batch_max=spec["batch_max"],
        protocol="5",  # shared subscriptions are MQTT 5's
        events=PipeEvents(out, spec["live"]),
        writer_process=store_spec if spec["writer_process"] else None,
        rules=WriterRules.from_json(spec["rules"]),
        receipts=spec["receipts"],
    )
    ingest.on_jobs = lambda: out.send({"jobs": True})
    if not spec["writer_process"]:
        _exit_when_stale(ingest)
    reporter = _Reporter(out, ingest)
    ingest.on_progress = reporter.poke
    try:
        try:
            ingest.open_writer()
        except WriterGone as exc:
            out.send({"failed": str(exc)})
            return 1
        out.send({"loaded": True})
        if not _await_connect(stdin, ingest, out):  # the parent went away before asking us to connect
            return 0
        try:
            ingest.start()
        except BrokerError as exc:
            out.send({"failed": str(exc)})
            return 1
        relax_gc()
        out.send({"ready": {"client_id": ingest.client_id}})
        reporter.start()
        _follow(stdin, ingest, out)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
        ingest.stop()
        reporter.stop()
        store.engine.dispose()
    return 0


def _exit_when_stale(ingest: Ingest) -> None:
    """A SQLite file that was read-only when this process first opened it stays so to every
    later connection of the process, even once writable (``writer.StaleReadOnly``): the worker
    then exits, unacknowledged, and the parent starts another, which finds it writable."""
    writer = ingest.writer
    writer.reopen_in_new_process = True
    write = writer.write

    def write_or_exit(items: Sequence[Item]) -> Outcome | None:
        try:
            return write(items)
        except StaleReadOnly as exc:
            log.warning("%s; this worker exits for a new one (the broker delivers its batch again)", exc)
            logging.shutdown()
            os._exit(75)  # EX_TEMPFAIL, at once: nothing of this batch is acknowledged

    writer.write = write_or_exit  # type: ignore[method-assign]


def _await_connect(stdin: IO[bytes], ingest: Ingest, out: _Out) -> bool:
    while (body := receive_frame(stdin)) is not None:
        message = json.loads(body)
        if message.get("connect"):
            return True
        if "live" in message:
            _set_live(ingest, out, bool(message["live"]))
    return False


def _set_live(ingest: Ingest, out: _Out, live: bool) -> None:
    assert isinstance(ingest.events, PipeEvents)
    ingest.events.live = live
    out.send({"live": live})


def _follow(stdin: IO[bytes], ingest: Ingest, out: _Out) -> None:
    """The parent's requests, until its end of the pipe closes."""
    while (body := receive_frame(stdin)) is not None:
        message = json.loads(body)
        if "live" in message:
            _set_live(ingest, out, bool(message["live"]))
        elif "publish" in message:
            request = message["publish"]
            ok = ingest.publish(request["topic"], request["payload"].encode(), request["qos"])
            out.send({"published": request["id"], "ok": ok})


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _raise_stop)
    run_child("ingest-worker", _serve)
