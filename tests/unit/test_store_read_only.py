"""A read-only SQLite store: the file, its -wal and its -shm are each named until writable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.store_url import probe_store, read_only_files


def test_a_read_only_shm_beside_a_writable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite made the -shm while the file was read-only, with its mode; the file was made
    writable as the warning said, and ingest never resumed: only the file was checked."""
    db = tmp_path / "agg.db"
    store = Store(make_engine(f"sqlite:///{db}"))
    store.create_all()
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).touch()
    real_access = os.access
    # root writes any file whatever its mode: what a non-root aggregator's os.access says
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("-shm") and real_access(path, mode))
    assert read_only_files(db) == [db.with_name("agg.db-shm")]
    line = probe_store(store.engine, f"sqlite:///{db}")
    assert line is not None and "agg.db-shm" in line and "read-only" in line
    monkeypatch.setattr(os, "access", real_access)
    assert read_only_files(db) == [] and probe_store(store.engine, f"sqlite:///{db}") is None
    store.engine.dispose()
