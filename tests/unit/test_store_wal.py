"""The aggregator's SQLite WAL: grown while readers held back its checkpoints, it is cut back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from s4edge.cloud_sync.aggregator.retention import Retention
from s4edge.cloud_sync.aggregator.store import WAL_LIMIT_BYTES, Store, make_engine
from s4edge.cloud_sync.messages import Alert, Location

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_a_wal_grown_under_readers_is_cut_back_by_the_retention_turn(tmp_path: Path) -> None:
    db = tmp_path / "agg.db"
    store = Store(make_engine(f"sqlite:///{db}"))
    store.create_all()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_LIMIT_BYTES
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM alerts").fetchone()  # a console's read, its snapshot held
    for batch in range(40):  # no checkpoint can pass the reader's snapshot: the WAL grows
        rows = [
            Alert(
                id=f"a-{batch:03d}-{i:04d}", node_id="n1", site="s1", seq=batch * 500 + i, ts=T0, kind="gas",
                severity="Severe", state="new", incident=f"inc-{batch:03d}-{i:04d}",
                location=Location(lat=48.1, lon=11.5), detail="a gas reading " * 30,
            )
            for i in range(500)
        ]  # fmt: skip
        with store.engine.begin() as conn:
            store.insert_alerts(conn, [(alert, T0) for alert in rows])
    wal = db.with_name("agg.db-wal")
    assert wal.stat().st_size > 2 * WAL_LIMIT_BYTES
    reader.execute("COMMIT")
    reader.close()
    Retention(store.engine, 86400.0, lambda: T0 + timedelta(days=1)).prune_once()
    assert wal.stat().st_size <= WAL_LIMIT_BYTES  # it stayed at its largest for good
    store.engine.dispose()
