"""The store fails under a running aggregator and comes back: ``/healthz`` says so while it
cannot commit, and the backlog is stored without a restart (a real mosquitto; SQLite read-only
at start under ``s4edge aggregator run``, PostgreSQL cutting every connection)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import POSTGRES
from sqlalchemy import create_engine, text

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.messages import Alert, Location, encode, topic_for
from s4edge.cloud_sync.ng112 import records  # noqa: F401  (its tables join the store's, as `aggregator run` has them)
from s4edge.testing import Mosquitto, free_port
from s4edge.testing import eventually as wait_until

# root writes a read-only file all the same; without these capabilities it is held to the mode bits
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def alert(seq: int) -> Alert:
    return Alert(
        id=f"alert-ro-{seq:05d}", node_id="n1", site="s1", seq=seq, kind="gas", severity="Severe",
        state="new", incident="inc-ro-00001", location=Location(lat=52.5, lon=13.4),
    )  # fmt: skip


def health(url: str) -> int:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_store_read_only_at_start_recovers_once_writable(
    broker: Mosquitto, node: mqtt.Client, tmp_path: Path, writer: str
) -> None:
    wrapper: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None or subprocess.run([*NO_OVERRIDE, "true"], check=False).returncode:
            pytest.skip("running as root, and setpriv (util-linux) cannot drop CAP_DAC_OVERRIDE here")
        wrapper = NO_OVERRIDE
    db = tmp_path / "agg.db"
    store = Store(make_engine(f"sqlite:///{db}"))
    store.create_all()  # a store the aggregator ran on before: every table is there
    store.engine.dispose()
    db.chmod(0o444)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        *("aggregator", "run", "--broker", broker.url, "--db", f"sqlite:///{db}", "--writer", writer),
        *("--http", f"127.0.0.1:{port}", "--client-id", f"agg-ro-{writer}"),
    ]
    proc = subprocess.Popen([*wrapper, sys.executable, "-m", "s4edge", *args], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or health(url) == 200, what="the aggregator to come up")
        assert proc.poll() is None, "the aggregator exited"
        for seq in range(5):
            node.publish(topic_for(alert(seq)), encode(alert(seq)), qos=1).wait_for_publish(5)
        wait_until(lambda: health(url) == 503, what="/healthz to report that nothing can be committed")
        said = httpx.get(f"{url}/healthz").json()["detail"]["store"]
        assert "cannot commit" in said and "readonly" in said, said  # why, not only the error's class
        for path in tmp_path.glob("agg.db*"):  # the file, and the WAL files SQLite made read-only like it
            path.chmod(0o644)
        wait_until(lambda: store.count_alerts() == 5, 30, what="the backlog, stored without a restart")
        wait_until(lambda: health(url) == 200, what="/healthz to recover")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)


def test_postgres_connections_cut_under_the_aggregator_are_opened_again(
    broker: Mosquitto, node: mqtt.Client, pg_schema: str
) -> None:
    """What a PostgreSQL restart does to its clients: every connection of the aggregator (its
    writer process's included, found by application name) is ended by the server."""
    name = f"s4edge-{pg_schema}"
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"{POSTGRES}?application_name={name}", db_schema=pg_schema,
        client_id="agg-pg-cut", writer="process",
    )  # fmt: skip
    with Aggregator(config) as running:
        node.publish(topic_for(alert(0)), encode(alert(0)), qos=1).wait_for_publish(5)
        wait_until(lambda: running.store.count_alerts() == 1, what="the first alert")
        admin = create_engine(POSTGRES)
        with admin.begin() as conn:
            cut = conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name},
            ).all()
        admin.dispose()
        assert cut, "no connection of the aggregator's to cut"
        for seq in range(1, 5):
            node.publish(topic_for(alert(seq)), encode(alert(seq)), qos=1).wait_for_publish(5)
        wait_until(lambda: running.store.count_alerts() == 5, 30, what="the alerts sent after the cut")
        wait_until(lambda: health(running.url) == 200, what="/healthz")
