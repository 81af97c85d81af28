"""The outbox: durable put, ordered pending, ack after PUBACK, bounded telemetry, seq."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import s4edge.cloud_sync.outbox as outbox_module
from s4edge.cloud_sync.outbox import SEQ_BLOCK, Outbox, OutboxClosed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp_outbox(tmp_path: Path):
    with Outbox(tmp_path / "outbox.db", telemetry_max=10) as outbox:
        yield outbox


def test_put_then_pending_returns_rows_in_order(tmp_outbox: Outbox) -> None:
    ids = [tmp_outbox.put("t/alert", f"a{i}".encode(), qos=1, kind="alert") for i in range(5)]
    rows = tmp_outbox.pending(limit=10)
    assert [r.id for r in rows] == ids
    assert [r.payload for r in rows] == [f"a{i}".encode() for i in range(5)]
    assert rows[0].topic == "t/alert" and rows[0].qos == 1 and rows[0].kind == "alert"
    assert [r.id for r in tmp_outbox.pending(limit=2, after=ids[1])] == ids[2:4]


def test_ack_deletes_only_the_acknowledged_rows(tmp_outbox: Outbox) -> None:
    ids = [tmp_outbox.put("t", b"x") for _ in range(4)]
    tmp_outbox.ack([ids[0], ids[2]])
    assert [r.id for r in tmp_outbox.pending()] == [ids[1], ids[3]]
    assert tmp_outbox.depth() == 2


def test_telemetry_is_bounded_oldest_first_and_drops_are_counted(tmp_outbox: Outbox) -> None:
    tel = [tmp_outbox.put("t/telemetry", f"t{i}".encode(), qos=0, kind="telemetry") for i in range(15)]
    assert tmp_outbox.dropped() == 5
    assert [r.id for r in tmp_outbox.pending(limit=100)] == tel[5:]


def test_alerts_are_never_evicted(tmp_outbox: Outbox) -> None:
    alerts = [tmp_outbox.put("t/alert", b"a", kind="alert") for _ in range(30)]
    for _ in range(30):
        tmp_outbox.put("t/telemetry", b"t", qos=0, kind="telemetry")
    kept = [r for r in tmp_outbox.pending(limit=1000)]
    assert [r.id for r in kept if r.kind == "alert"] == alerts
    assert sum(r.kind == "telemetry" for r in kept) == 10
    assert tmp_outbox.dropped() == 20


def test_drop_count_and_rows_survive_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", telemetry_max=10) as outbox:
        for _ in range(12):
            outbox.put("t", b"t", kind="telemetry")
        outbox.put("t", b"a", kind="alert")
    with Outbox(tmp_path / "o.db", telemetry_max=10) as outbox:
        assert outbox.dropped() == 2
        assert outbox.depth() == 11


def test_seq_is_monotonic_across_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        first = [outbox.next_seq() for _ in range(SEQ_BLOCK + 5)]
    assert first == sorted(set(first))
    with Outbox(tmp_path / "o.db") as outbox:
        again = outbox.next_seq()
    assert again > first[-1]


def test_put_next_stores_rows_in_seq_order_under_concurrency(tmp_outbox: Outbox) -> None:
    def burst() -> None:
        for _ in range(50):
            tmp_outbox.put_next("t", lambda seq: str(seq).encode())

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [int(r.payload) for r in tmp_outbox.pending(limit=1000)]
    assert len(seqs) == 200
    assert seqs == sorted(seqs)


def test_a_stored_seq_never_repeats_after_its_blocks_reservation_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first put's batch (with its seq block's reservation) fails on a full disk while
    # a second put, stamped from that block, waits for the next batch, which succeeds: the
    # counter on disk stayed behind that stored seq, and a restart handed it out again
    with Outbox(tmp_path / "o.db") as outbox:
        commit, failing = outbox._commit, threading.Event()

        def first_batch_fails(batch: list) -> None:
            if not failing.is_set():
                failing.set()
                time.sleep(0.2)  # the second put queues meanwhile: into the next batch

                def full(db: sqlite3.Connection) -> None:
                    raise sqlite3.OperationalError("database or disk is full")

                for op in batch:
                    op.write = full
            commit(batch)

        monkeypatch.setattr(outbox, "_commit", first_batch_fails)
        refused: list[BaseException] = []

        def first() -> None:
            try:
                outbox.put_next("t", lambda seq: str(seq).encode())
            except sqlite3.Error as exc:
                refused.append(exc)

        thread = threading.Thread(target=first)
        thread.start()
        assert failing.wait(5)
        outbox.put_next("t", lambda seq: str(seq).encode())
        thread.join()
        assert len(refused) == 1
        stored = [int(r.payload) for r in outbox.pending()]
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.next_seq() > max(stored)


def test_remember_command_refuses_a_replay_even_after_reopen(tmp_path: Path) -> None:
    until = time.time() + 60
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.remember_command("cmd-0001", until)
        assert not outbox.remember_command("cmd-0001", until)
    with Outbox(tmp_path / "o.db") as outbox:
        assert not outbox.remember_command("cmd-0001", until)
        assert outbox.remember_command("cmd-0002", until)


def test_a_command_replayed_after_the_clock_went_back_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Executed, then expired (a later command's bookkeeping ran past its expiry), then the
    board reboots with its clock in the past, where the command is valid again: its id must
    still be there (it was deleted at expiry, and the replay ran)."""
    t0 = time.time()
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.remember_command("cmd-0001", t0 + 60)
        monkeypatch.setattr(time, "time", lambda: t0 + 1000)
        assert outbox.remember_command("cmd-0002", t0 + 1060)
    monkeypatch.setattr(time, "time", lambda: t0 + 100)  # no battery clock: booted in the past
    with Outbox(tmp_path / "o.db") as outbox:
        assert not outbox.remember_command("cmd-0001", t0 + 60)


def test_expired_command_ids_beyond_the_kept_number_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "SEEN_COMMANDS_KEPT", 3)
    t0 = time.time()
    with Outbox(tmp_path / "o.db") as outbox:
        for i in range(6):
            assert outbox.remember_command(f"old-{i}", t0 - 100 + i)  # all expired
        assert outbox.remember_command("new", t0 + 60)
        assert outbox.remember_command("old-0", t0 - 100)  # forgotten: the oldest beyond the 3 kept
        assert not outbox.remember_command("old-5", t0 - 95)  # among the newest kept


def test_put_after_close_is_refused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    outbox.close()
    with pytest.raises(OutboxClosed):
        outbox.put("t", b"x")


_BURST = """
import sys
from s4edge.cloud_sync.outbox import Outbox
outbox = Outbox(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    row = outbox.put("t/alert", b"alert-%d" % i)
    print(row, flush=True)
    i += 1
"""


def test_every_acknowledged_put_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _BURST, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    printed: list[int] = []
    while len(printed) < 200:
        printed.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    printed += [int(line) for line in child.stdout.read().split()]
    with Outbox(db) as outbox:
        stored = {r.id for r in outbox.pending(limit=1_000_000)}
    assert set(printed) <= stored


def test_an_alert_awaiting_its_receipt_stays_in_flight_until_confirmed(tmp_outbox: Outbox) -> None:
    alert = tmp_outbox.put("t/alert", b"a", receipt_id="alert-0001")
    telemetry = tmp_outbox.put("t/telemetry", b"t", qos=0, kind="telemetry")
    assert [r.receipt_id for r in tmp_outbox.pending()] == ["alert-0001", None]
    tmp_outbox.mark_in_flight([(alert, 1, 1000.0)])  # the broker's PUBACK
    tmp_outbox.ack([telemetry])
    assert tmp_outbox.pending() == [] and tmp_outbox.unsent() == 0 and tmp_outbox.depth() == 1
    assert tmp_outbox.due(now=999.0, horizon=100.0) == []
    (due,) = tmp_outbox.due(now=1000.0, horizon=100.0)
    assert (due.id, due.attempts, due.payload) == (alert, 1, b"a")
    tmp_outbox.confirm(["never-ours-0001", "alert-0001", "alert-0001"])  # unknown and repeated ids: harmless
    assert tmp_outbox.depth() == 0


def test_a_mark_far_ahead_of_the_clock_is_due_at_once(tmp_outbox: Outbox) -> None:
    """A node without a battery-backed clock may boot years in the past."""
    alert = tmp_outbox.put("t/alert", b"a", receipt_id="alert-0001")
    tmp_outbox.mark_in_flight([(alert, 3, 1_800_000_000.0)])
    assert tmp_outbox.due(now=1_000_000.0, horizon=1200.0, limit=10)[0].id == alert


def test_in_flight_marks_survive_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        row = outbox.put("t/alert", b"a", receipt_id="alert-0001")
        outbox.mark_in_flight([(row, 2, 1000.0)])
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.pending() == [] and outbox.depth() == 1
        assert [(r.id, r.attempts, r.receipt_id) for r in outbox.due(1000.0, 100.0)] == [(row, 2, "alert-0001")]


def test_an_outbox_from_before_receipts_keeps_its_alerts_for_their_receipts(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "o.db")
    old.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " qos INTEGER NOT NULL, retain INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL);"
        "INSERT INTO outbox (topic, payload, qos, kind) VALUES"
        " ('t/alert', CAST('{\"id\": \"alert-0001\"}' AS BLOB), 1, 'alert'),"
        " ('t/telemetry', CAST('{\"id\": \"tele-0001\"}' AS BLOB), 0, 'telemetry');"
    )
    old.close()
    with Outbox(tmp_path / "o.db") as outbox:
        assert [r.receipt_id for r in outbox.pending()] == ["alert-0001", None]
        outbox.confirm(["alert-0001"])
        assert [r.kind for r in outbox.pending()] == ["telemetry"]


def test_marks_and_a_reader_of_what_is_due_never_break_each_others_writes(tmp_outbox: Outbox) -> None:
    # the mark's cursor was the operation's result, and went with the last holder of the
    # operation: a reader waiting in due() reset the writer's cached statement while the writer
    # ran it again (InterfaceError "bad parameter or other API misuse"), failing its batch
    rows = [tmp_outbox.put("t/alert", b"a", receipt_id=f"alert-{i:04d}") for i in range(100)]
    errors: list[BaseException] = []
    done = threading.Event()

    def mark() -> None:
        try:
            for k in range(2000):
                try:
                    tmp_outbox.mark_in_flight([(rows[k % 100], 1, time.time() + 60)])
                except sqlite3.Error as exc:
                    errors.append(exc)
        finally:
            done.set()

    marker = threading.Thread(target=mark)
    marker.start()
    while not done.is_set():
        tmp_outbox.due(time.time(), 100.0, 10)
    marker.join()
    assert errors == []
