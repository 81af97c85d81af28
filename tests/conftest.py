from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from s4edge.testing import Mosquitto
from s4edge.testing.disk import DiskUnavailable, SmallDisk

# the local PostgreSQL every development machine and CI run has (trust auth, database test)
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Models come from the shared mirror (docs/architecture.md, "Models") into a cache private to this run.
if (SHARED / "models").is_dir():
    os.environ.setdefault("S4EDGE_MODEL_MIRROR", str(SHARED / "models"))
os.environ.setdefault("S4EDGE_MODEL_CACHE", tempfile.mkdtemp(prefix="s4edge-models-"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free port, that the test may kill and restart."""
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def node(broker: Mosquitto) -> Iterator[mqtt.Client]:
    """A paho client on the test's broker that publishes the way a node does."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-under-test", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL (``POSTGRES``) per test, dropped afterwards, so
    runs never see each other's rows; skips when the server is unreachable."""
    engine = create_engine(POSTGRES, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES} ({type(exc.orig).__name__}); start it to run this")
    schema = f"s4edge_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(url, schema) of an aggregator store: a SQLite file, or a fresh schema on the local
    PostgreSQL (``pg_schema``, skipped when it is unreachable), so a test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agg.db'}", None
    return POSTGRES, request.getfixturevalue("pg_schema")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs of the test's own, to fill and free; skips where it cannot be mounted."""
    small = SmallDisk(tmp_path / "disk", size="2m")
    try:
        small.mount()
    except DiskUnavailable as exc:
        pytest.skip(f"a full disk needs a tmpfs of its own, and this machine will not mount one ({exc}); run as root")
    yield small
    small.unmount()


@pytest.fixture
def shared() -> Path:
    """../shared beside the repo (models, images, NIR data, CAP schema)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the reference models and data live there")
    return SHARED
