"""Refused connections at a real mosquitto become ``s4edge_broker_auth_failures_total`` at the
aggregator, which tails the broker's log file (mosquitto publishes none of them on $SYS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.broker_log import LogClassifier
from s4edge.cloud_sync.fleet.mosquitto_files import password_hash
from s4edge.testing import Mosquitto

TIMEOUT = 10.0
SECRET = "correct horse battery staple"


@pytest.fixture
def locked_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that knows only the aggregator's password."""
    passwords = tmp_path / "passwords"
    passwords.write_text(f"aggregator:{password_hash(SECRET)}\n")
    with Mosquitto(tmp_path / "broker", anonymous=False, config_extra=f"password_file {passwords}") as running:
        yield running


def failures(aggregator: Aggregator, reason: str) -> float:
    value = aggregator.metrics.registry.get_sample_value("s4edge_broker_auth_failures_total", {"reason": reason})
    return value or 0.0


def knock(broker: Mosquitto, username: str | None, password: str | None) -> int:
    """Connect once and return the CONNACK reason code."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"intruder-{username}", protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    answers: list[int] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason.value)
    client.connect(broker.host, broker.port)
    deadline = time.monotonic() + TIMEOUT
    while not answers and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    assert answers, "no CONNACK"
    return answers[0]


def test_refused_logins_are_counted_from_the_broker_log(locked_broker: Mosquitto, tmp_path: Path) -> None:
    config = AggregatorConfig(
        BrokerConfig(locked_broker.url, username="aggregator", password=SECRET),
        db_url=f"sqlite:///{tmp_path / 'agg.db'}",
        client_id="agg-log",
        broker_log=locked_broker.log,
    )
    with Aggregator(config) as aggregator:
        assert failures(aggregator, "not_authorised") == 0  # the earlier log lines do not count
        assert knock(locked_broker, "node-a", "wrong") >= 0x80
        assert knock(locked_broker, None, None) >= 0x80
        deadline = time.monotonic() + TIMEOUT
        while failures(aggregator, "not_authorised") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures(aggregator, "not_authorised") == 2
        assert aggregator.ingest.connected  # the aggregator's own login is not a failure
        metrics = httpx.get(f"{aggregator.url}/metrics", timeout=5).text
        assert 's4edge_broker_auth_failures_total{reason="not_authorised"} 2.0' in metrics


def test_a_refused_certificate_counts_once() -> None:
    # Lines as mosquitto 2.0.11 wrote them for the fleet tests (revoked, foreign-CA and
    # plaintext clients on the TLS listener, a wrong password).
    lines = [
        "1795659006: New connection from 127.0.0.1:40122 on port 8883.",
        "1795659006: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "1795659006: Client <unknown> disconnected: Protocol error.",
        "1795659473: Client connection from 127.0.0.1 failed: error:0A0000C7:SSL routines::peer did not return a "
        "certificate.",
        "1795659002: Client connection from 127.0.0.1 failed: error:0A00010B:SSL routines::wrong version number.",
        "1795659487: Client connection from 127.0.0.1 failed: error:0A000126:SSL routines::unexpected eof while "
        "reading.",
        "1795659002: Client <unknown> disconnected, not authorised.",
        "1795659003: Client node-a disconnected.",
        "1795659004: Client node-b disconnected due to protocol error.",
    ]
    classifier = LogClassifier()
    reasons = [classifier.reason(line) for line in lines]
    assert reasons == [
        *(None, "tls_certificate", None, "tls_certificate", "tls_handshake", None),
        *("not_authorised", None, "protocol_error"),
    ]
