"""``s4edge aggregator run`` refuses bad arguments and unreachable brokers with a clear message."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from s4edge.cli import app

runner = CliRunner()


def test_http_must_be_host_and_port(tmp_path: Path) -> None:
    result = runner.invoke(app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--http", "8080"])
    assert result.exit_code == 2
    assert "HOST:PORT" in result.output


def test_an_unreachable_broker_stops_it_with_a_reason(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    result = runner.invoke(
        app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    )
    assert result.exit_code == 1
    assert "aggregator did not start: could not connect to mqtt://127.0.0.1:1" in result.output


def test_a_broker_url_with_another_scheme_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    result = runner.invoke(app, ["aggregator", "run", "--broker", "http://x:1", "--db", db, "--http", "127.0.0.1:0"])
    assert result.exit_code == 1
    assert "use mqtt://host:port or mqtts://host:port" in result.output
