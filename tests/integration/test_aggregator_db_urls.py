"""``s4edge aggregator run --db``: postgres:// (the form PostgreSQL hosts hand out) runs against
the local PostgreSQL; every store that cannot be used stops it with one line on stderr that says
what is wrong and shows a good URL, never a traceback and never the password."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import POSTGRES
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Alert, Location, encode, topic_for
from s4edge.testing import Mosquitto, eventually, free_port

PASSWORD = "hunter2-not-shown"
PG_HOST = "127.0.0.1:5432"
runner = CliRunner()


def postgres_reachable() -> bool:
    engine = create_engine(POSTGRES, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


needs_postgres = pytest.mark.skipif(not postgres_reachable(), reason=f"PostgreSQL is unreachable at {POSTGRES}")


def read_only_sqlite(tmp_path: Path) -> str:
    db = tmp_path / "ro.db"
    sqlite3.connect(db).close()
    return f"sqlite:///file:{db}?mode=ro&uri=true"  # read-only even to root, unlike chmod


def unreadable_sqlite(tmp_path: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("root reads and writes any file: chmod 000 cannot make one unreadable")
    db = tmp_path / "locked.db"
    sqlite3.connect(db).close()
    db.chmod(0)
    return f"sqlite:///{db}"


def not_a_database(tmp_path: Path) -> str:
    (tmp_path / "notes.db").write_text("not a database\n")
    return f"sqlite:///{tmp_path / 'notes.db'}"


# (--db for tmp_path, what the line says, the example it shows)
CASES: dict[str, tuple[Callable[[Path], str], str, str]] = {
    "mysql": (lambda _: f"mysql://s4edge:{PASSWORD}@db.example/s4edge", "mysql is not a store", "sqlite:///"),
    "malformed port": (lambda _: f"postgresql://u:{PASSWORD}@db:port/x", "not a valid database URL", "postgresql://"),
    "no scheme": (lambda tmp: str(tmp / "agg.db"), "is not a database URL", "sqlite:///"),
    "missing folder": (lambda tmp: f"sqlite:///{tmp / 'nowhere' / 'agg.db'}", "does not exist", "sqlite:///"),
    "a folder": (lambda tmp: f"sqlite:///{tmp}", "is a folder", "sqlite:///"),
    "read-only file": (read_only_sqlite, "is read-only", "sqlite:///"),
    "unreadable file": (unreadable_sqlite, "may not read and write it", "sqlite:///"),
    "not a database": (not_a_database, "is not an SQLite database", "sqlite:///"),
    "refused port": (
        lambda _: f"postgres://postgres:{PASSWORD}@127.0.0.1:{free_port()}/test",
        "Connection refused; is PostgreSQL running",
        "postgresql://",
    ),
}
PG_CASES: dict[str, tuple[str, str]] = {
    "wrong role": (f"postgresql://nobody-here:{PASSWORD}@{PG_HOST}/test", 'role "nobody-here" does not exist'),
    "wrong database": (f"postgres://postgres:{PASSWORD}@{PG_HOST}/no_such_db", 'database "no_such_db" does not exist'),
}


def run_with(db: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    )
    return result.exit_code, result.stderr, result.output


def assert_one_clear_line(code: int, stderr: str, output: str, says: str, example: str) -> None:
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in output and PASSWORD not in output
    assert says in lines[0] and "e.g. " in lines[0] and example in lines[0].split("e.g. ", 1)[1], lines[0]


@pytest.mark.parametrize("case", CASES)
def test_a_store_that_cannot_be_used_is_one_line(tmp_path: Path, case: str) -> None:
    make, says, example = CASES[case]
    assert_one_clear_line(*run_with(make(tmp_path)), says, example)


@needs_postgres
@pytest.mark.parametrize("case", PG_CASES)
def test_a_postgresql_that_refuses_us_is_one_line(case: str) -> None:
    db, says = PG_CASES[case]
    assert_one_clear_line(*run_with(db), says, "postgresql://")


def test_in_a_real_process_stderr_is_that_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'nowhere' / 'agg.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "s4edge", "aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"aggregator did not start: --db {db}: the folder {tmp_path / 'nowhere'} does not exist; create it or "
        "name a file in another, e.g. sqlite:////var/lib/s4edge/aggregator.db"
    ]


@needs_postgres
@pytest.mark.slow
def test_postgres_scheme_runs_against_the_local_postgresql(broker: Mosquitto, pg_schema: str) -> None:
    db = POSTGRES.replace("postgresql+psycopg://", "postgres://")
    port = free_port()
    argv = [sys.executable, "-m", "s4edge", "aggregator", "run", "--broker", broker.url, "--db", db]
    argv += ["--db-schema", pg_schema, "--http", f"127.0.0.1:{port}", "--client-id", "agg-postgres-scheme"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, 30, "the aggregator on postgres:// healthy")
        alert = Alert(
            id="alert-postgres-scheme", node_id="n1", site="s1", seq=1, kind="gas", severity="Moderate",
            state="new", incident="inc-postgres-scheme", location=Location(lat=0, lon=0),
        )  # fmt: skip
        node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pg-scheme-node", protocol=mqtt.MQTTv5)
        node.connect(broker.host, broker.port)
        node.loop_start()
        try:
            node.publish(topic_for(alert), encode(alert), qos=1).wait_for_publish(10)
        finally:
            node.loop_stop()
            node.disconnect()

        def stored() -> bool:
            ids = [a["id"] for a in httpx.get(f"{url}/api/alerts", timeout=5).json()["alerts"]]
            return alert.id in ids

        eventually(stored, 20, "the alert at /api/alerts")
        engine = create_engine(POSTGRES)
        with engine.connect() as conn:
            found = conn.execute(text(f'SELECT id FROM "{pg_schema}".alerts')).scalars().all()
        engine.dispose()
        assert found == [alert.id], "stored in PostgreSQL, in the schema asked for"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(("db", "says"), [("mysql://u@db/x", "mysql is not a store"), ("sqlite:///a.db", "PostgreSQL")])
def test_the_replicas_bench_checks_its_db_the_same_way(db: str, says: str) -> None:
    result = runner.invoke(app, ["bench", "replicas", "--db", db, "--runs", "1"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert says in result.stderr and "postgresql://s4edge:PASSWORD@" in result.stderr.split("e.g. ", 1)[1]
