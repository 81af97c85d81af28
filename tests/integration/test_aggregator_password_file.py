"""``s4edge aggregator run --password-file``: the aggregator signs in to the fleet's own broker
(TLS, a password file, the ACL) with the password `s4edge fleet aggregator-credentials` wrote,
and the password shows neither in its command line (``ps``) nor in its environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Alert, Location, encode, topic_for
from s4edge.testing import eventually as wait_until
from s4edge.testing import free_port
from s4edge.testing.fleet import SITE, Fleet, build_fleet, login

TIMEOUT = 20.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = build_fleet(tmp_path)
    yield built
    built.broker.stop()


def aggregator_args(fleet: Fleet, password_file: Path, tmp_path: Path, port: int) -> list[str]:
    return [
        *("aggregator", "run", "--broker", f"mqtts://127.0.0.1:{fleet.port}", "--ca-file", str(fleet.ca)),
        *("--username", "aggregator", "--password-file", str(password_file)),
        *("--db", f"sqlite:///{tmp_path / 'agg.db'}", "--http", f"127.0.0.1:{port}"),
    ]


def without_broker_secrets() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("S4EDGE_BROKER_PASSWORD", "S4EDGE_BROKER_USERNAME")}


def test_the_aggregator_signs_in_with_the_password_from_its_file_and_shows_it_nowhere(
    fleet: Fleet, tmp_path: Path
) -> None:
    password_file = fleet.node_dir("aggregator") / "aggregator.password"  # 0600, ends with a newline
    password = password_file.read_text().removesuffix("\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s4edge", *aggregator_args(fleet, password_file, tmp_path, port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=without_broker_secrets(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    node = None
    try:

        def up() -> bool:
            assert proc.poll() is None, f"the aggregator exited: {proc.stderr.read() if proc.stderr else ''}"
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=TIMEOUT, what="the aggregator signed in and serving")
        node = login(fleet, "node-a")
        alert = Alert(
            node_id="node-a", site=SITE, seq=1, kind="smoke", severity="Severe", state="new",
            incident="inc-password-file", location=Location(lat=40.41, lon=-3.7),
        )  # fmt: skip
        assert node.publish(topic_for(alert), encode(alert)) == 0
        wait_until(
            lambda: httpx.get(f"{url}/api/incidents", timeout=5).json()["total"] == 1,
            timeout=TIMEOUT,
            what="the alert stored through the broker that wants the password",
        )
        # what `ps` shows, and what another process of the same user could read
        for view in ("cmdline", "environ"):
            shown = Path(f"/proc/{proc.pid}/{view}").read_bytes()
            assert password.encode() not in shown, f"the password is in /proc/PID/{view}"
        assert str(password_file).encode() in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if node is not None:
            node.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_password_in_the_file_is_the_one_the_broker_checks(fleet: Fleet, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text(fleet.password("aggregator")[::-1] + "\n")
    wrong.chmod(0o600)
    result = CliRunner().invoke(
        app, aggregator_args(fleet, wrong, tmp_path, 0), env={"S4EDGE_BROKER_PASSWORD": "", "COLUMNS": "400"}
    )
    assert result.exit_code == 1, result.output
    assert "aggregator did not start" in result.output and "authori" in result.output.lower(), result.output
