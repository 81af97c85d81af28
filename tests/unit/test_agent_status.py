"""``s4edge agent status``: what a node's outbox holds and when it last got through, read on
site (often offline) without the agent's lock and without changing a byte, agent running or not."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import topic
from s4edge.cloud_sync.outbox import Outbox

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
runner = CliRunner()


@pytest.fixture
def node_yaml(tmp_path: Path) -> Path:
    data = yaml.safe_load(SIM.read_text())
    data["outbox"] = {"path": str(tmp_path / "state" / "outbox.db")}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "node.yaml"


@pytest.fixture
def tmp_outbox(node_yaml: Path) -> Iterator[Outbox]:
    outbox = Outbox(node_yaml.parent / "state" / "outbox.db")
    yield outbox
    outbox.close()


def put_alert(outbox: Outbox, ts: str, alert_id: str) -> int:
    payload = json.dumps({"type": "alert", "id": alert_id, "ts": ts}).encode()
    return outbox.put(topic("demo-city", "sim-node-1", "alert"), payload, kind="alert", receipt_id=alert_id)


def status(config: Path, *args: str) -> Any:
    return runner.invoke(app, ["agent", "status", "--config", str(config), *args])


def status_json(config: Path) -> dict[str, Any]:
    result = status(config, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def folder_state(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file in ``folder``: its mtime and content hash."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}


def test_a_stopped_agents_outbox_is_read_and_left_as_it_was(node_yaml: Path, tmp_outbox: Outbox) -> None:
    put_alert(tmp_outbox, "2025-03-01T10:00:00Z", "alert-1")
    second = put_alert(tmp_outbox, "2025-03-01T10:05:00Z", "alert-2")
    third = put_alert(tmp_outbox, "2025-03-01T10:06:00Z", "alert-3")
    tmp_outbox.put(topic("demo-city", "sim-node-1", "telemetry"), b"{}", qos=0, kind="telemetry")
    tmp_outbox.mark_in_flight([(second, 1, 4e9), (third, 1, 4e9)])  # the broker took two
    tmp_outbox.confirm(["alert-3"])  # and the aggregator stored one
    tmp_outbox.close()
    state = node_yaml.parent / "state"
    before = folder_state(state)

    report = status_json(node_yaml)
    assert report["site"] == "demo-city" and report["node_id"] == "sim-node-1"
    assert report["agent_running"] is False and report["agent_pid"] is None
    assert report["alerts_queued"] == 2 and report["alerts_awaiting_receipt"] == 1
    assert report["queued"] == {"alert": 2, "telemetry": 1}
    assert report["oldest_alert_at"] == "2025-03-01T10:00:00Z" and report["oldest_alert_age_s"] > 0
    assert report["last_published_at"] is not None and report["last_receipt_at"] is not None
    # no -wal, -shm or .lock file appeared: under sudo they were root's, and the agent's user
    # could not open its own outbox again
    assert folder_state(state) == before


def test_the_text_says_it_plainly(node_yaml: Path, tmp_outbox: Outbox) -> None:
    put_alert(tmp_outbox, "2025-03-01T10:00:00Z", "alert-1")
    tmp_outbox.close()
    result = status(node_yaml)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "node:          demo-city/sim-node-1" in lines
    assert "agent:         not running" in lines
    assert "alerts queued: 1 (0 sent, awaiting the receipt)" in lines
    assert any(line.startswith("oldest alert:  2025-03-01T10:00:00Z, ") and line.endswith(" ago") for line in lines)
    assert "last publish:  none recorded" in lines
    assert "last receipt:  none recorded" in lines


def test_it_reads_while_the_agent_holds_the_outbox_and_names_its_pid(node_yaml: Path, tmp_outbox: Outbox) -> None:
    # this process is the agent: it holds the lock as `agent run` does, and its outbox is open
    lock = (node_yaml.parent / "state" / "outbox.db.lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        put_alert(tmp_outbox, "2025-03-01T10:00:00Z", "alert-1")
        report = status_json(node_yaml)
        assert report["agent_running"] is True and report["agent_pid"] == os.getpid()
        assert report["alerts_queued"] == 1
        tmp_outbox.confirm(["alert-1"])  # the agent goes on writing
        assert status_json(node_yaml)["alerts_queued"] == 0
    finally:
        lock.close()
    assert status_json(node_yaml)["agent_running"] is False


def test_without_a_lock_table_the_agent_is_unknown(
    node_yaml: Path, tmp_outbox: Outbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from s4edge.edge import cli

    (node_yaml.parent / "state" / "outbox.db.lock").touch()
    monkeypatch.setattr(cli, "PROC_LOCKS", tmp_path / "no-proc-locks")  # not Linux
    result = status(node_yaml)
    assert result.exit_code == 0, result.output
    assert "agent:         unknown (no /proc/locks)" in result.output.splitlines()


def test_an_outbox_from_before_receipts_is_read_as_it_is(node_yaml: Path) -> None:
    path = node_yaml.parent / "state" / "outbox.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # the schema before receipts: no receipt_id, attempts, resend_at
        db.executescript(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
            " qos INTEGER NOT NULL, retain INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL);"
            "CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        )
        db.execute("INSERT INTO outbox (topic, payload, qos, kind) VALUES ('t', '{\"ts\": \"nonsense\"}', 1, 'alert')")
    db.close()
    before = folder_state(path.parent)
    report = status_json(node_yaml)
    assert report["alerts_queued"] == 1 and report["alerts_awaiting_receipt"] == 0
    assert report["oldest_alert_at"] is None  # a ts no agent wrote
    assert folder_state(path.parent) == before  # the agent adds the columns; status does not


def test_no_outbox_is_a_clear_error(node_yaml: Path) -> None:
    result = status(node_yaml)
    assert result.exit_code == 1
    outbox = node_yaml.parent / "state" / "outbox.db"
    assert result.output == (
        f"error: no outbox at {outbox}: no agent has run with this config yet, or outbox.path in {node_yaml} "
        "is not the running agent's\n"
    )
    assert not outbox.parent.exists()  # nothing created


@pytest.mark.parametrize("what", ["a text file", "another database", "a folder"])
def test_what_is_no_outbox_is_a_clear_error(node_yaml: Path, what: str) -> None:
    outbox = node_yaml.parent / "state" / "outbox.db"
    outbox.parent.mkdir()
    if what == "a text file":
        outbox.write_text("node_id: sim-node-1\n" * 100)
        expected = f"error: {outbox} is not an s4edge outbox (file is not a database): check outbox.path in"
    elif what == "another database":
        with sqlite3.connect(outbox) as db:
            db.execute("CREATE TABLE alerts (id TEXT)")
        db.close()
        expected = f"error: {outbox} is not an s4edge outbox (it holds no outbox table): check outbox.path in"
    else:
        outbox.mkdir()
        expected = f"error: cannot read the outbox {outbox}: Is a directory"
    result = status(node_yaml)
    assert result.exit_code == 1 and result.output.startswith(expected), result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_outbox_says_to_use_the_agents_user(node_yaml: Path, tmp_outbox: Outbox) -> None:
    tmp_outbox.close()
    outbox = node_yaml.parent / "state" / "outbox.db"
    outbox.chmod(0)
    result = status(node_yaml)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot read the outbox {outbox} (Permission denied): run this as")


def json_error(result: Any) -> dict[str, Any]:
    """What ``--json`` printed for an error: one JSON object on stdout, nothing else."""
    assert "Traceback" not in result.output
    said = json.loads(result.stdout)  # a script reads stdout; text there would not parse
    assert set(said) == {"error", "hint"} and all(said.values()), said
    return dict(said)


def test_under_json_no_outbox_is_a_json_error_with_the_same_exit_code(node_yaml: Path) -> None:
    # a monitoring script ran `s4edge agent status --json | jq` on a node whose agent had not run
    # yet: it got "error: no outbox at …" and could not parse it
    result = status(node_yaml, "--json")
    assert result.exit_code == 1
    outbox = node_yaml.parent / "state" / "outbox.db"
    said = json_error(result)
    assert said["error"] == f"no outbox at {outbox}"
    assert said["hint"] == (
        f"no agent has run with this config yet, or outbox.path in {node_yaml} is not the running agent's"
    )


@pytest.mark.parametrize("what", ["a text file", "a folder"])
def test_under_json_an_unreadable_outbox_is_a_json_error(node_yaml: Path, what: str) -> None:
    outbox = node_yaml.parent / "state" / "outbox.db"
    outbox.parent.mkdir()
    if what == "a folder":
        outbox.mkdir()
    else:
        outbox.write_text("node_id: sim-node-1\n" * 100)
    result = status(node_yaml, "--json")
    assert result.exit_code == 1
    said = json_error(result)
    assert str(outbox) in said["error"]
    text = status(node_yaml)  # the text says the same, in one line
    assert text.exit_code == 1 and text.output == f"error: {said['error']}: {said['hint']}\n"


def test_under_json_a_bad_config_is_a_json_error_with_the_same_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("node_id: [unclosed\n")
    assert status(bad).exit_code == 2
    result = status(bad, "--json")
    assert result.exit_code == 2
    said = json_error(result)
    assert str(bad) in said["error"] and "not valid YAML" in said["error"]
    assert "s4edge agent check" in said["hint"]


def test_a_receipt_and_a_puback_are_stamped_when_they_come(tmp_outbox: Outbox) -> None:
    from s4edge.cloud_sync.outbox import read_backlog

    row = put_alert(tmp_outbox, "2025-03-01T10:00:00Z", "alert-1")
    assert read_backlog(tmp_outbox.path).published_at is None
    tmp_outbox.mark_in_flight([(row, 1, 4e9)])
    published = read_backlog(tmp_outbox.path).published_at
    assert published is not None and read_backlog(tmp_outbox.path).receipt_at is None
    tmp_outbox.confirm(["alert-1"])  # the aggregator's receipt names it
    backlog = read_backlog(tmp_outbox.path)
    assert backlog.receipt_at is not None and backlog.receipt_at >= published
    assert backlog.queued == {}
