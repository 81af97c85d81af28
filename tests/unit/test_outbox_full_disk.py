"""The outbox on a disk with no byte left (a real tmpfs): writes fail with SQLITE_FULL,
the outbox says so until a write succeeds again, and a seq for a message that is never
stored still comes, from memory."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from s4edge.cloud_sync import outbox as outbox_module
from s4edge.cloud_sync.outbox import RESERVE_BYTES, Outbox
from s4edge.edge.health import DISK_FULL, Health, is_disk_full
from s4edge.testing.disk import DiskUnavailable, SmallDisk


def test_a_full_disk_is_the_outbox_failure_until_a_write_succeeds(disk: SmallDisk) -> None:
    with Outbox(disk.mountpoint / "outbox.db") as outbox:
        first = outbox.next_seq()
        outbox.put("t", b"before")
        disk.fill()
        stored = 0
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            for _ in range(1000):  # the first failed write gives up the reserve: its room takes some more
                outbox.put("t", b"x" * 4096)
                stored += 1
        assert stored * 4096 < 2 * RESERVE_BYTES and not outbox.reserve.exists()
        assert is_disk_full(outbox.failure)
        health = Health()
        health.set_outbox(outbox.failure)
        assert health.degraded() == [DISK_FULL]

        seqs = [first]
        for _ in range(1000):  # through a block boundary: that reservation cannot be stored
            try:
                seqs.append(outbox.next_seq())
            except sqlite3.OperationalError:
                break
        seqs.append(outbox.next_seq(durable=False))  # a heartbeat's, from memory
        assert outbox.depth() == 1 + stored  # what was stored is still there, and readable

        disk.free()
        seqs.append(outbox.next_seq())
        assert outbox.failure is None
        health.set_outbox(outbox.failure)
        assert health.degraded() == []
        assert seqs == sorted(set(seqs)), "seq only grows"
        outbox.put("t", b"after")
        assert outbox.depth() == 2 + stored


def test_any_other_store_error_is_an_outbox_fault(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "store.db").execute("CREATE TABLE t (x)").connection.close()
    read_only = sqlite3.connect(f"file:{tmp_path / 'store.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as raised:
        read_only.execute("INSERT INTO t VALUES (1)")
    read_only.close()
    health = Health()
    health.set_outbox(raised.value)
    assert health.degraded() == ["outbox"]
    assert health.states()["outbox"] == "fault: attempt to write a readonly database"
    health.set_outbox(None)
    assert health.states() == {}


def test_a_cleanly_closed_outbox_opens_on_a_full_disk_on_its_reserve(
    disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean close leaves no WAL or shared-memory file, and SQLite cannot make them on a disk
    with no byte left (``disk I/O error``): the outbox opens on the room its reserve file kept,
    says the disk is full while it cannot take that room back, and takes it back once it can."""
    path = disk.mountpoint / "outbox.db"
    with Outbox(path) as outbox:
        assert outbox.reserve.stat().st_size == RESERVE_BYTES
        outbox.put("t", b"held")
    assert sorted(p.name for p in disk.mountpoint.iterdir()) == ["outbox.db", "outbox.db.reserve"]
    disk.fill()
    outbox.reserve.rename(disk.mountpoint / "kept-aside")  # as though there were none to give up
    with pytest.raises(sqlite3.OperationalError):
        Outbox(path)
    (disk.mountpoint / "kept-aside").rename(outbox.reserve)

    monkeypatch.setattr(outbox_module, "RESERVE_RETRY_S", 0.0)
    with Outbox(path) as reopened:
        assert not reopened.reserve.exists()
        assert is_disk_full(reopened.failure)
        assert [row.payload for row in reopened.pending()] == [b"held"]
        reopened.put("t", b"on the reserve")  # its room is the outbox's now
        assert is_disk_full(reopened.failure), "still full: the reserve cannot be taken back"
        disk.free()
        reopened.put("t", b"after")
        assert reopened.failure is None
        assert reopened.reserve.stat().st_size == RESERVE_BYTES
        assert [row.payload for row in reopened.pending()] == [b"held", b"on the reserve", b"after"]


def test_a_state_folder_gone_from_under_the_outbox_is_a_fault_not_a_dead_writer(tmp_path: Path) -> None:
    # after each commit the writer looks at the disk's room (statvfs on the folder); when
    # that raised (an unplugged stick, an rm -rf of the state folder) the writer thread
    # died before releasing its waiters, and every later put hung for good
    folder = tmp_path / "state"
    folder.mkdir()
    with Outbox(folder / "outbox.db") as box:
        box.put("t", b"before")
        shutil.rmtree(folder)  # SQLite's open descriptors still write the unlinked file
        box.put("t", b"after")  # returned never, before
        assert box.depth() == 2
        assert isinstance(box.failure, FileNotFoundError)


def test_a_disk_filled_by_the_outbox_still_takes_the_receipts_deletes(disk: SmallDisk) -> None:
    """The node's own backlog fills its disk (the aggregator away); when the receipts come,
    their deletes must go through: every write failed for good, across restarts, and the outbox
    could never shrink by delivering what it held."""
    with Outbox(disk.mountpoint / "outbox.db") as outbox:
        stored = []
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(100_000):
                outbox.put("t/alert", b"x" * 1024, receipt_id=f"alert-{i:06d}")
                stored.append(f"alert-{i:06d}")
        assert not outbox.reserve.exists()  # given up by the failed write, for the writes after it
        outbox.confirm(stored[: len(stored) // 2])  # the aggregator's receipts
        assert outbox.depth() == len(stored) - len(stored) // 2
    with Outbox(disk.mountpoint / "outbox.db") as outbox:  # and after a restart
        outbox.confirm(stored[len(stored) // 2 :])
        assert outbox.depth() == 0
        outbox.put("t/alert", b"after", receipt_id="alert-after")


def test_a_given_up_reserve_is_taken_back_only_with_room_for_it_twice_over(
    disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write gives the reserve up; taking it back into the room that freed, at the
    next try (every 5 s), filled the disk again, and the writes after failed, over and over
    (a field report: commits failing every 15-25 s with the reserve back at 512 KiB)."""
    monkeypatch.setattr(outbox_module, "RESERVE_RETRY_S", 0.0)  # every commit tries to take it back
    with Outbox(disk.mountpoint / "outbox.db") as outbox:
        disk.fill()
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for _ in range(1000):
                outbox.put("t", b"x" * 4096)
        assert not outbox.reserve.exists()
        for i in range(40):  # about 40 KiB: the reserve's room holds them
            outbox.put("t", f"{i}".encode() * 1024)
        assert not outbox.reserve.exists(), "taken back with no room to spare"
        assert is_disk_full(outbox.failure), "on its reserve, the disk is full"

        disk.free()
        outbox.put("t", b"after")
        assert outbox.reserve.stat().st_size == RESERVE_BYTES
        assert outbox.failure is None


def test_an_outbox_made_on_a_small_disk_keeps_its_reserve(tmp_path: Path) -> None:
    # twice the reserve is the room to take it back; an outbox being made needs only its own
    # (a 1 MiB state partition never has twice, and would never have had one)
    try:
        small = SmallDisk(tmp_path / "small", size="1m").mount()
    except DiskUnavailable as exc:
        pytest.skip(f"a tmpfs of its own cannot be mounted here ({exc}); run as root")
    try:
        with Outbox(small.mountpoint / "outbox.db") as outbox:
            assert outbox.reserve.stat().st_size == RESERVE_BYTES
    finally:
        small.unmount()
