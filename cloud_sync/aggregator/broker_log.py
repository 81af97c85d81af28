"""Refused connections at the broker, counted from mosquitto's log file.

mosquitto publishes no authentication failures on ``$SYS``; its log names each one. The
aggregator can tail that file (``--broker-log``, the broker's ``log_dest file`` or the
journal exported to a file) and count the refusals into
``s4edge_broker_auth_failures_total{reason}``, so a node with a revoked certificate or a
wrong password shows on the same dashboard as the alerts. Only lines written after the
aggregator starts count; a rotated or truncated file is followed from its start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger("s4edge.aggregator")

# mosquitto 2.0 logs a refused TLS client as "OpenSSL Error[0]: error:…" or "Client connection
# from ADDR failed: error:…" with OpenSSL's reason; these reasons are the client's certificate.
CERTIFICATE_REFUSED = (
    "certificate verify failed",  # revoked (on the CRL), expired, or signed by another CA
    "peer did not return a certificate",
    "certificate revoked",
    "certificate expired",
    "unknown ca",
    "bad certificate",
)


class LogClassifier:
    """Reason of a refusal per log line, or None.

    A refused certificate is logged as an OpenSSL error and then as that client's protocol
    error: one refusal, counted once. "unexpected eof" is a client that gave up on the
    handshake (a port probe, or one that does not trust the broker), not a refusal."""

    def __init__(self) -> None:
        self._after_tls_error = False

    def reason(self, line: str) -> str | None:
        text = line.lower()
        after_tls_error, self._after_tls_error = self._after_tls_error, "openssl error" in text
        if "openssl error" in text or "failed: error:" in text:
            if "unexpected eof" in text:
                return None
            return "tls_certificate" if any(m in text for m in CERTIFICATE_REFUSED) else "tls_handshake"
        if "disconnected, not authorised" in text:
            return "not_authorised"  # bad password, anonymous, unknown user
        if "protocol error" in text and not (after_tls_error and "<unknown>" in text):
            return "protocol_error"
        return None


class BrokerLogWatch:
    def __init__(self, path: str | Path, count: Callable[[str], None], poll_s: float = 0.25) -> None:
        self.path = Path(path)
        self.count = count
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None

    def start(self) -> None:
        self._open(at_end=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aggregator-broker-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._file is not None:
            self._file.close()
        self._thread, self._file = None, None

    def _open(self, at_end: bool) -> None:
        try:
            handle = self.path.open(encoding="utf-8", errors="replace")
        except OSError:
            self._file = None  # not there yet (the broker has not started): looked for again
            return
        if at_end:
            handle.seek(0, os.SEEK_END)
        self._file = handle

    def _replaced(self) -> bool:
        """logrotate moved the file away (new inode) or truncated it (copytruncate)."""
        assert self._file is not None
        try:
            current = os.stat(self.path)
        except OSError:
            return False
        return current.st_ino != os.fstat(self._file.fileno()).st_ino or current.st_size < self._file.tell()

    def _run(self) -> None:
        classifier = LogClassifier()
        pending = ""
        while not self._stop.is_set():
            if self._file is None:
                self._open(at_end=False)
                if self._file is None:
                    self._stop.wait(self.poll_s)
                    continue
            chunk = self._file.readline()
            if not chunk:
                if self._replaced():
                    self._file.close()
                    self._open(at_end=False)
                    pending = ""
                else:
                    self._stop.wait(self.poll_s)
                continue
            pending += chunk
            if not pending.endswith("\n"):
                continue  # the broker is mid-line: wait for the rest
            reason = classifier.reason(pending)
            pending = ""
            if reason is not None:
                self.count(reason)
