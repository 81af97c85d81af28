"""The watchdog's judgement of the node's threads, and the rate limit on the errors a
loop survives."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.edge.health import ServiceNotifier
from s4edge.edge.supervision import Watchdog, alive
from s4edge.testing.notify import NotifySocket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_failing_every_second_logs_once_a_minute_and_once_when_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    failures = FailureLog(logging.getLogger("loop"), "heartbeat", every_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="loop"):
        for second in range(150):
            clock.now = float(second)
            failures.failed(OSError(28, "No space left on device"))
        failures.ok()
        failures.ok()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == ("ERROR", "heartbeat failed: OSError: [Errno 28] No space left on device", True)
    assert [line[1].split(":")[0] for line in lines[1:3]] == ["heartbeat still failing"] * 2
    assert "60 more failures in 60 s" in lines[1][1] and not lines[1][2]
    assert lines[3] == ("WARNING", "heartbeat works again after 150 failures", False)
    assert len(lines) == 4


def test_dead_and_stalled_threads_hold_the_ping_back(tmp_path: Path) -> None:
    listener = NotifySocket(str(tmp_path / "notify"))
    watchdog = Watchdog(ServiceNotifier(listener.address), stall_after_s=0.2)
    try:
        stamp = [time.monotonic()]
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        watchdog.watch("uplink", lambda: stamp[0])
        watchdog.watch("forwarder", alive(worker.is_alive))
        assert watchdog.ping() and listener.next(5) == "WATCHDOG=1"

        stop.set()
        worker.join()
        assert watchdog.problems() == ["forwarder: not running"]
        assert not watchdog.ping()
        watchdog.forget("forwarder")

        stamp[0] -= 1.0  # no progress for a second, against a patience of 0.2 s
        assert watchdog.problems() == ["uplink: no progress for 1 s"]
        assert not watchdog.ping()
        stamp[0] = time.monotonic()
        assert watchdog.ping()
        assert listener.during(0.2) == ["WATCHDOG=1"]  # nothing sent while held back
    finally:
        listener.close()
