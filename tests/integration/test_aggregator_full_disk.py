"""The aggregator's SQLite store on a disk that fills up (a real tmpfs, a real mosquitto, ``s4edge
aggregator run``): no alert is lost or receipted while nothing can be committed, /healthz names
the full disk, and ingest resumes by itself once there is room, also for an aggregator that
was (re)started on the full disk."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.messages import Alert, Location, encode, topic, topic_for
from s4edge.testing import Mosquitto, eventually, free_port
from s4edge.testing.disk import SmallDisk
from s4edge.testing.mosquitto import stop_process


def alert(seq: int) -> Alert:
    return Alert(
        id=f"alert-full-{seq:05d}", node_id="n1", site="s1", seq=seq, kind="gas", severity="Severe",
        state="new", incident=f"inc-full-{seq:05d}", location=Location(lat=52.5, lon=13.4),
        detail="methane above the lower alarm level near the east entrance of the hall",
    )  # fmt: skip


class Receipts:
    """The alert ids the aggregator has receipted to node n1."""

    def __init__(self, node: mqtt.Client) -> None:
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        node.message_callback_add(topic("s1", "n1", "receipt"), self._on_receipt)
        node.subscribe(topic("s1", "n1", "receipt"), qos=1)

    def _on_receipt(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.ids.update(json.loads(message.payload)["alert_ids"])

    def of(self, alerts: list[Alert]) -> set[str]:
        with self._lock:
            return self.ids & {a.id for a in alerts}


def healthz(url: str) -> tuple[int, dict[str, object]]:
    try:
        answer = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    body = answer.json()
    return answer.status_code, body.get("detail", body)


@pytest.fixture
def store_on(disk: SmallDisk) -> Path:
    return disk.mountpoint / "agg.db"


def aggregator(broker: Mosquitto, db: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``s4edge aggregator run`` on ``db``, its stderr in ``log`` (not on the disk that fills)."""
    port = free_port()
    args = [
        *("aggregator", "run", "--broker", broker.url, "--db", f"sqlite:///{db}", "--workers", "1"),
        *("--http", f"127.0.0.1:{port}", "--client-id", "agg-full-disk"),
    ]
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "s4edge", *args], stderr=err, text=True)
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: proc.poll() is not None or healthz(url)[0] != 0, 30, "the aggregator to come up")
    assert proc.poll() is None, f"the aggregator exited: {log.read_text()}"
    return proc, url


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        stop_process(proc, 20)  # type: ignore[arg-type]


def publish(node: mqtt.Client, alerts: list[Alert]) -> None:
    for a in alerts:
        node.publish(topic_for(a), encode(a), qos=1).wait_for_publish(5)


def stored(db: Path) -> int:
    store = Store(make_engine(f"sqlite:///{db}"))
    try:
        return store.count_alerts()
    finally:
        store.engine.dispose()


def test_alerts_wait_out_a_full_disk_unreceipted_and_are_stored_once_there_is_room(
    broker: Mosquitto,
    node: mqtt.Client,
    disk: SmallDisk,
    store_on: Path,
    stopped: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    receipts = Receipts(node)
    proc, url = aggregator(broker, store_on, tmp_path / "aggregator.log")
    stopped.append(proc)
    before = [alert(seq) for seq in range(3)]
    publish(node, before)
    eventually(lambda: receipts.of(before) == {a.id for a in before}, 20, "the first alerts' receipts")
    disk.fill()
    during = [alert(seq) for seq in range(100, 130)]
    publish(node, during)
    _, body = eventually(lambda: (h := healthz(url))[0] == 503 and h, 30, "/healthz to say the store fails")
    said = str(body["store"])
    assert f"cannot commit: the disk holding {store_on} is full" in said, said  # it said "database or disk is full"
    assert receipts.of(during) == set(), "an alert receipted while nothing could be committed"
    disk.free()
    eventually(lambda: receipts.of(during) == {a.id for a in during}, 60, "the backlog's receipts once there is room")
    assert stored(store_on) == len(before) + len(during)
    eventually(lambda: healthz(url)[0] == 200, 20, "/healthz to recover")
    assert proc.poll() is None


def test_an_aggregator_started_on_a_full_disk_comes_up_and_stores_once_there_is_room(
    broker: Mosquitto,
    node: mqtt.Client,
    disk: SmallDisk,
    store_on: Path,
    stopped: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    # it was "aggregator did not start: --db sqlite:///…: disk I/O error; e.g. sqlite:////var/lib/…":
    # SQLite cannot even read a WAL store whose -shm it cannot make, and systemd restarted it in
    # a loop with no console and no /healthz to say why
    created = Store(make_engine(f"sqlite:///{store_on}"))
    created.create_all()  # the store it ran on before its restart, closed cleanly (no -wal, no -shm)
    created.engine.dispose()
    receipts = Receipts(node)
    disk.fill()
    proc, url = aggregator(broker, store_on, tmp_path / "aggregator.log")
    stopped.append(proc)
    code, body = healthz(url)
    assert code == 503 and f"the disk holding {store_on} is full" in str(body["store"]), body
    waiting = [alert(seq) for seq in range(5)]
    publish(node, waiting)
    disk.free()
    eventually(lambda: receipts.of(waiting) == {a.id for a in waiting}, 60, "receipts once there is room")
    assert stored(store_on) == len(waiting)
    eventually(lambda: healthz(url)[0] == 200, 20, "/healthz to recover")


def test_the_shared_subscription_group_drawn_before_is_kept_on_a_full_disk(disk: SmallDisk, store_on: Path) -> None:
    # SQLite could not read the store: the workers fell back to a group named after the client
    # id, which a node could guess and join for its turn of the fleet's messages
    created = Store(make_engine(f"sqlite:///{store_on}"))
    created.create_all()
    drawn = created.share_group()
    created.engine.dispose()
    disk.fill()
    assert Store(make_engine(f"sqlite:///{store_on}")).share_group() == drawn
