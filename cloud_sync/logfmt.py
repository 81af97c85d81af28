"""Structured logs: one JSON object per line, for journald/Loki/Elastic on both sides.

    logging.basicConfig(level="INFO", handlers=[json_handler()])

Fields: ``ts`` (UTC, ISO-8601), ``level``, ``logger``, ``msg``, plus ``exc`` for an
exception and any ``extra={...}`` keys the caller passes.

``FailureLog`` is how a loop that must not die (the node's uplink, tick and source
threads) logs the errors it survives.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


LOG_FORMAT_ENV = "S4EDGE_LOG_FORMAT"  # "json": child processes log as their parent was told to


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


class FailureLog:
    """A loop's failures with a rate limit: the first with its traceback, then at most one
    line per ``every_s`` that counts the failures since, and one line when the loop works
    again. A loop failing on every turn (a full disk, a broken driver) must neither flood
    the journal nor go quiet about it. Thread-safe: the sources share the telemetry's.

    A failure that ``expected`` says is a condition of the machine, not a bug (a full disk),
    is a WARNING of one line: its traceback would only say where it was noticed."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        expected: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self.logger = logger
        self.what = what
        self.every_s = every_s
        self._clock = clock
        self._expected = expected
        self.failures = 0  # in the current run of failures
        self._unlogged = 0
        self._logged_at = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = self._clock()
            self.failures += 1
            expected = self._expected(exc)
            level = logging.WARNING if expected else logging.ERROR
            said = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            if self.failures == 1:
                self.logger.log(level, "%s failed: %s", self.what, said, exc_info=None if expected else exc)
            elif now - self._logged_at >= self.every_s:
                self.logger.log(
                    level, "%s still failing: %d more failures in %.0f s, the last: %s",
                    self.what, self._unlogged + 1, now - self._logged_at, said,
                )  # fmt: skip
            else:
                self._unlogged += 1
                return
            self._logged_at = now
            self._unlogged = 0

    def ok(self) -> None:
        """The loop's last turn worked: ends a run of failures."""
        if not self.failures:  # the common case, on every turn: no lock
            return
        with self._lock:
            if self.failures:
                self.logger.warning("%s works again after %d failures", self.what, self.failures)
                self.failures = 0
                self._unlogged = 0
