"""``aggregator run`` against a real mosquitto whose certificate has expired, or soon will: the
operator reads the broker certificate's name and date and what renews it, not OpenSSL's
verify failure."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s4edge.cloud_sync.fleet.ca import FleetCA, init_ca, issue_client_cert, issue_server_cert
from s4edge.cloud_sync.fleet.validity import shown
from s4edge.testing import Mosquitto, free_port
from s4edge.testing.mosquitto import stop_process, wait_for_port

NOW = dt.datetime.now(dt.UTC)


def tls_broker(tmp_path: Path, ca: FleetCA, not_after: dt.datetime) -> Mosquitto:
    """mosquitto with a TLS listener that requires a client certificate, its own certificate
    ending at ``not_after``."""
    server_cert, server_key = issue_server_cert(ca, ["localhost"], ["127.0.0.1"], tmp_path / "pki", not_after=not_after)
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {ca.cert_path}\ncertfile {server_cert}\nkeyfile {server_key}\n"
        "require_certificate true\n"
    )
    broker = Mosquitto(tmp_path / "broker", config_extra=extra).start()
    wait_for_port(broker.host, tls_port)
    broker.port = tls_port  # what the aggregator is told
    return broker


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[FleetCA]:
    yield init_ca(tmp_path / "ca")


def aggregator(tmp_path: Path, ca: FleetCA, broker: Mosquitto) -> subprocess.Popen[str]:
    cert, key = issue_client_cert(ca, "aggregator", tmp_path / "agg", "aggregator")
    args = [
        *("aggregator", "run", "--broker", f"mqtts://127.0.0.1:{broker.port}"),
        *("--db", f"sqlite:///{tmp_path / 'agg.db'}", "--http", "127.0.0.1:0", "--workers", "1"),
        *("--ca-file", str(ca.cert_path), "--cert-file", str(cert), "--key-file", str(key)),
    ]
    return subprocess.Popen([sys.executable, "-m", "s4edge", *args], stderr=subprocess.PIPE, text=True)


def test_a_broker_certificate_that_expired_is_named_with_its_date(tmp_path: Path, ca: FleetCA) -> None:
    # it was "could not connect to mqtts://…: SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED]
    # certificate verify failed: certificate has expired (_ssl.c:1006)"
    expired = NOW - dt.timedelta(days=2)
    broker = tls_broker(tmp_path, ca, expired)
    try:
        proc = aggregator(tmp_path, ca, broker)
        _, err = proc.communicate(timeout=60)
    finally:
        broker.stop()
    assert proc.returncode == 1, err
    assert (
        f"aggregator did not start: could not connect to mqtts://127.0.0.1:{broker.port}: the broker's certificate "
        f"(CN=localhost) expired on {shown(expired.replace(microsecond=0))} (notAfter): renew it on the broker with "
        "`s4edge fleet ca server-cert"
    ) in err, err
    assert "SSLCertVerificationError" not in err and "Traceback" not in err


def test_a_broker_certificate_that_expires_within_a_month_is_warned_about(tmp_path: Path, ca: FleetCA) -> None:
    soon = NOW + dt.timedelta(days=9)
    broker = tls_broker(tmp_path, ca, soon)
    proc = aggregator(tmp_path, ca, broker)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()], daemon=True).start()
    seen = ""
    try:
        while "aggregator: http" not in seen:  # started; the warning comes next, or nothing does
            seen += lines.get(timeout=60)
        with contextlib.suppress(queue.Empty):
            seen += lines.get(timeout=20)
    finally:
        stop_process(proc)  # type: ignore[arg-type]
        broker.stop()
    assert (
        f"warning: the broker's certificate (CN=localhost) expires on {shown(soon.replace(microsecond=0))} "
        "(notAfter), in 9 days: renew it on the broker"
    ) in seen, seen
