"""The NG112 forwarder in a child process of the aggregator.

Why: a forward costs the forwarder a dozen statements, a CAP document built and checked
against its schema, and a SIP transaction, all holding the GIL that the aggregator's
network thread needs to take the fleet's alerts in. In a process of its own it runs on
another core, and ingest runs as fast with NG112 on as with it off (``s4edge bench ingest``).

The store is the only state the two share: ingest commits the forward jobs, the child's
``Forwarder`` drains them and sends, and the parent's ``ForwardDesk`` decides for the
operator (confirm, dismiss) in the store too. The pipe carries only hints, as
length-prefixed JSON frames (``cloud_sync/pipe.py``):

- parent → child: the store's spec, the NG112 config and the log level, once; then
  ``{"wake": true}`` after each commit that wrote jobs or an operator's decision. The end
  of the child's stdin means stop: it finishes its sends in flight and exits.
- child → parent: ``{"ready": true}`` once it has its store, then ``{"change": row}`` for
  every change of a forward, which the parent hands on to the dashboard.

A child that dies is started again after a pause; it takes the jobs and lapsed claims the
last one left, so a crash loses no call (see ``forwarder.py`` on claims).
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import subprocess
import sys
import threading
from typing import IO

from sqlalchemy import Engine

from s4edge.cloud_sync.aggregator.store import make_engine
from s4edge.cloud_sync.aggregator.writer import StoreSpec
from s4edge.cloud_sync.ng112.desk import ForwardDesk, OnChange
from s4edge.cloud_sync.ng112.forwarder import STOP_WAIT_S, Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.pipe import receive_frame, receive_spec, run_child, send_frame

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 30.0  # importing, and opening the store
RESTART_PAUSE_S = 1.0  # after the child died: not a busy loop if it dies at once again
WAKE = json.dumps({"wake": True}).encode()
# The forwarder's own commits on SQLite (claims, outcomes, forwards recorded from jobs) are
# synced at NORMAL: WAL keeps them through a crash of either process, and only a power cut
# may undo the last of them, which costs a resend (a claim taken back), never a call lost,
# as the jobs were committed by the writer at its own setting. At FULL each of them held
# SQLite's one write lock for an fsync (3 ms here), and ingest's commits queued behind.
FORWARDS_SQLITE_SYNC = "NORMAL"


class ForwarderGone(RuntimeError):
    """The forwarder process did not start."""


class ForwarderProcess(ForwardDesk):
    """The parent's handle: decisions and waits on the store, sends by the child."""

    # What the interpreter runs; a test may put a wrapper here.
    program: tuple[str, ...] = ("-m", "s4edge.cloud_sync.ng112.process")

    def __init__(self, spec: StoreSpec, engine: Engine, config: Ng112Config, *, on_change: OnChange | None = None):
        super().__init__(engine, on_change=on_change)
        self.spec = spec
        self.config = config
        self._child: subprocess.Popen[bytes] | None = None
        self._pipe = threading.Lock()  # one writer at a time on the child's stdin
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        if self._reader is not None:
            return
        self._stopping.clear()
        self._child = self._spawn()
        self._reader = threading.Thread(target=self._read, name="ng112-forwarder-pipe", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def wake(self) -> None:
        """Cheap, from any thread: a few bytes on the child's stdin. A child gone meanwhile
        misses nothing: the one started next takes every job in the store."""
        with self._pipe:
            child = self._child
            if child is None or child.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                send_frame(child.stdin, WAKE)

    def stop(self) -> None:
        """The child finishes its sends in flight and exits; killed if it takes longer."""
        self._stopping.set()
        with self._pipe:
            child = self._child
            if child is not None and child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
        if child is not None:
            try:
                child.wait(STOP_WAIT_S + 5)
            except subprocess.TimeoutExpired:
                log.warning("ng112: the forwarder process did not stop in time; its claims lapse")
                child.kill()
                child.wait(10)
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None

    # -- the child ---------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, *self.program], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        spec = {
            "url": self.spec.url,  # on the pipe, not in argv: it may hold a password
            "schema": self.spec.schema,
            "sqlite_sync": FORWARDS_SQLITE_SYNC,
            "config": self.config.model_dump(mode="json"),
            "log_level": logging.getLogger("s4edge").getEffectiveLevel(),
        }
        with contextlib.suppress(OSError):  # a child gone already is reported below
            send_frame(child.stdin, json.dumps(spec).encode())
        ready, _, _ = select.select([child.stdout], [], [], READY_TIMEOUT_S)
        if not ready or receive_frame(child.stdout) is None:
            child.kill()
            code = child.wait(10)
            for stream in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            raise ForwarderGone(
                f"the NG112 forwarder process did not start within {READY_TIMEOUT_S:.0f} s "
                f"(exit code {code}); see its log above"
            )
        return child

    def _read(self) -> None:
        while True:
            child = self._child
            assert child is not None and child.stdout is not None
            while (body := receive_frame(child.stdout)) is not None:
                row = json.loads(body).get("change")
                if row is not None:
                    self._changed_from_child(row)
            code = child.wait()
            with contextlib.suppress(OSError):
                child.stdout.close()
            if self._stopping.is_set():
                return
            log.error("ng112: the forwarder process exited (code %s); starting another", code)
            if self._stopping.wait(RESTART_PAUSE_S) or not self._respawn():
                return

    def _respawn(self) -> bool:
        with self._pipe:
            if self._stopping.is_set():
                return False
            try:
                self._child = self._spawn()
            except (ForwarderGone, OSError) as exc:
                log.error("ng112: %s; forwarding stops until the aggregator restarts", exc)
                self._child = None
                return False
            self.restarts += 1
            return True

    def _changed_from_child(self, row: dict[str, object]) -> None:
        with self._changed:
            self._changed.notify_all()
        if self.on_change is not None:
            try:
                self.on_change(row)
            except Exception:  # the dashboard's view only
                log.exception("ng112: could not announce the change of forward %s", row.get("id"))


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    spec = receive_spec(stdin)
    if spec is None:
        return 1
    engine = make_engine(spec["url"], spec["schema"], spec["sqlite_sync"])
    config = Ng112Config.model_validate(spec["config"])
    out = threading.Lock()  # the send workers announce from their own threads

    def announce(row: dict[str, object]) -> None:
        with out:
            send_frame(stdout, json.dumps({"change": row}).encode())

    forwarder = Forwarder(engine, config, on_change=announce)
    forwarder.start()
    with out:
        send_frame(stdout, b'{"ready": true}')
    while (body := receive_frame(stdin)) is not None:
        if json.loads(body).get("wake"):
            forwarder.wake()
    forwarder.stop()  # the parent closed our stdin (or died): finish what is in flight
    engine.dispose()
    return 0


if __name__ == "__main__":
    run_child("ng112-forwarder", _serve)
