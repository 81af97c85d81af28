"""The agent under systemd: sd_notify READY/WATCHDOG/STOPPING datagrams on a real unix
socket, the watchdog silent once a node loop has died, and JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.edge.health import ServiceNotifier
from s4edge.testing import eventually, free_port
from s4edge.testing.notify import NotifySocket

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "firmware_configs" / "sim-node.yaml"


def config_data(tmp_path: Path) -> dict[str, Any]:
    data = yaml.safe_load(SIM.read_text())
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: no broker needed
    data["heartbeat"]["interval_s"] = 0.05  # the tick loop, and so the watchdog, every 50 ms
    data["sources"] = []
    return data


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    yield listener
    listener.sock.close()


def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path, notify: NotifySocket) -> None:
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    try:
        node.start()
        assert notify.wait_for("READY=1") == ["READY=1"]
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")
    finally:
        node.close(flush_s=0)
    assert notify.wait_for("STOPPING=1")[-1] == "STOPPING=1"


def test_the_watchdog_sees_the_outbox_writer_stop(tmp_path: Path) -> None:
    # every put, ack and receipt waits on that thread: without it the node stores nothing
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    try:
        node.start()
        assert node.watchdog.problems() == []
        node.outbox.close()
        assert "outbox-writer: not running" in node.watchdog.problems()
    finally:
        node.close(flush_s=0)


def test_the_watchdog_goes_silent_when_the_forwarder_dies(tmp_path: Path, notify: NotifySocket) -> None:
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    try:
        node.start()
        notify.wait_for("WATCHDOG=1")
        node.forwarder.stop()
        assert node.watchdog.problems() == ["outbox-forwarder: not running"]
        notify.during(0.2)  # a ping that passed its check just before the forwarder stopped
        # ten tick periods: a live node would have pinged about ten times
        assert "WATCHDOG=1" not in notify.during(0.5)
    finally:
        node.close(flush_s=0)


def test_a_failing_incident_book_stops_neither_heartbeats_nor_the_watchdog(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    beats = []
    heartbeat = node.heartbeat

    def expire(now: float) -> None:
        raise sqlite3.OperationalError("database or disk is full")  # an incident's end that cannot be stored

    monkeypatch.setattr(node.book, "expire", expire)
    monkeypatch.setattr(node, "heartbeat", lambda: beats.append(heartbeat()))
    try:
        node.start()
        for _ in range(3):
            notify.wait_for("WATCHDOG=1")
        eventually(lambda: len(beats) >= 3, 10, "heartbeats while the expiry fails")
    finally:
        node.close(flush_s=0)


def test_the_watchdog_goes_silent_when_the_connection_thread_ends(tmp_path: Path, notify: NotifySocket) -> None:
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    try:
        node.start()
        notify.wait_for("WATCHDOG=1")
        node.uplink.close()
        assert node.watchdog.problems() == ["mqtt-uplink: not running"]
        notify.during(0.2)
        assert "WATCHDOG=1" not in notify.during(0.5)
    finally:
        node.close(flush_s=0)


def test_a_stalled_connection_thread_silences_the_watchdog_until_it_moves_again(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(parse_config(config_data(tmp_path)), base_dir=tmp_path)
    node.watchdog.stall_after_s = 1.5  # above the thread's one stamp a second while it waits to reconnect
    stalled, released = threading.Event(), threading.Event()
    status = node._status

    def hung_disk(state: str) -> tuple[str, bytes]:  # the Last Will's seq, behind an fsync that hangs
        if stalled.is_set():
            released.wait(30)
        return status(state)

    monkeypatch.setattr(node, "_status", hung_disk)
    try:
        node.start()
        notify.wait_for("WATCHDOG=1")
        stalled.set()  # the next connect attempt (one second of backoff away at most) hangs
        problems = eventually(node.watchdog.problems, 10, "the stall noticed")
        assert problems[0].startswith("mqtt-uplink: no progress for")
        notify.during(0.2)
        assert "WATCHDOG=1" not in notify.during(0.5)
        released.set()
        notify.wait_for("WATCHDOG=1", timeout=5)
    finally:
        released.set()
        node.close(flush_s=0)


def test_abstract_namespace_address(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = NotifySocket(f"@s4edge-test-{uuid.uuid4().hex}")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    try:
        assert ServiceNotifier.from_environment().watchdog()
        assert listener.next(5) == "WATCHDOG=1"
    finally:
        listener.sock.close()


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not ServiceNotifier.from_environment().ready()
    # a socket that vanished: refused quietly, never raised into the tick loop
    assert not ServiceNotifier(str(tmp_path / "gone")).watchdog()


@pytest.mark.slow  # a real agent process: ~5 s of interpreter start and shutdown
def test_agent_logs_json_lines_under_systemd(tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config_data(tmp_path)))
    listener = NotifySocket(str(tmp_path / "notify"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": listener.address}
    child = subprocess.Popen(
        [sys.executable, "-m", "s4edge", "agent", "run", "--config", str(config_file), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        listener.wait_for("READY=1", timeout=60)
        child.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1")
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        listener.sock.close()
    assert child.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
    assert {"level": "INFO", "logger": "s4edge.edge.cli", "msg": "signal 15: stopping"}.items() <= next(
        entry for entry in lines if entry["logger"] == "s4edge.edge.cli"
    ).items()


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config_data(tmp_path)))
    result = CliRunner().invoke(app, ["agent", "run", "--config", str(config_file), "--log-format", "xml"])
    assert result.exit_code == 2
    assert "--log-format must be auto, text or json" in result.output
    assert not (tmp_path / "outbox.db").exists()


def test_a_listener_that_stops_reading_never_stalls_the_notifier(notify: NotifySocket) -> None:
    """Its queue fills up; the pings that do not fit are dropped, not waited on: the loop that
    sends them also publishes the heartbeats."""
    notifier = ServiceNotifier(notify.address)
    sent: list[bool] = []
    pinging = threading.Thread(target=lambda: sent.extend(notifier.notify("WATCHDOG=1") for _ in range(5000)))
    pinging.start()
    pinging.join(20)
    assert not pinging.is_alive(), "a ping waited for the listener"
    assert sent[0] and not sent[-1]  # the first ones queued, the ones past a full queue dropped
    assert notify.next(1) == "WATCHDOG=1"
