"""The aggregator's store on SQLite: de-dup, ordering, paging, staleness, acks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from s4edge.cloud_sync.aggregator.store import AlertQuery, Store, make_engine
from s4edge.cloud_sync.messages import Alert, CommandResult, Heartbeat, Location, Status

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FrozenClock) -> Store:
    created = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"), clock=clock)
    created.create_all()
    return created


def alert(seq: int, node: str = "n1", kind: str = "gas", severity: str = "Severe", at: datetime = T0) -> Alert:
    return Alert(
        id=f"alert-{node}-{seq:04d}", node_id=node, site="s1", seq=seq, ts=at + timedelta(seconds=seq),
        kind=kind, severity=severity, state="new", incident=f"inc-{node}-0001", location=Location(lat=48.1, lon=11.5),
    )  # fmt: skip


def store_alerts(store: Store, batch: list[Alert]) -> set[str]:
    with store.engine.begin() as conn:
        return store.insert_alerts(conn, [(a, T0) for a in batch])


def test_an_alert_id_is_stored_once(store: Store) -> None:
    assert store_alerts(store, [alert(1), alert(2)]) == {"alert-n1-0001", "alert-n1-0002"}
    assert store_alerts(store, [alert(2), alert(3)]) == {"alert-n1-0003"}
    assert store.count_alerts() == 3


def test_alerts_page_newest_first_with_a_cursor(store: Store) -> None:
    store_alerts(store, [alert(i) for i in range(7)])
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        page, cursor = store.alerts(AlertQuery(limit=3, cursor=cursor))
        seen += [a["seq"] for a in page]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1, 0]


def test_alert_filters(store: Store) -> None:
    store_alerts(store, [alert(1, kind="smoke"), alert(2, severity="Minor"), alert(3, node="n2")])
    assert [a["seq"] for a in store.alerts(AlertQuery(kind="smoke"))[0]] == [1]
    assert [a["seq"] for a in store.alerts(AlertQuery(severity="Minor"))[0]] == [2]
    assert [a["node_id"] for a in store.alerts(AlertQuery(node="n2"))[0]] == ["n2"]
    assert [a["seq"] for a in store.alerts(AlertQuery(since=T0 + timedelta(seconds=2)))[0]] == [3, 2]
    assert store.alerts(AlertQuery(incident="inc-n2-0001"))[0][0]["seq"] == 3


def test_an_alert_delivered_late_is_found_by_when_it_arrived(store: Store) -> None:
    """A node kept an alert for two hours (offline, or its clock behind): by its ts it is older
    than the last poll, and a poller asking `since` never saw it."""
    late, fresh = alert(1, at=T0 - timedelta(hours=2)), alert(2, at=T0)
    with store.engine.begin() as conn:
        store.insert_alerts(conn, [(late, T0), (fresh, T0)])
        store.insert_alerts(conn, [(alert(3, at=T0 - timedelta(hours=1)), T0 - timedelta(hours=1))])
    last_poll = T0 - timedelta(minutes=1)
    assert [a["seq"] for a in store.alerts(AlertQuery(since=last_poll))[0]] == [2]
    assert [a["seq"] for a in store.alerts(AlertQuery(received_since=last_poll))[0]] == [2, 1]


def test_a_forged_cursor_is_a_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="bad cursor"):
        store.alerts(AlertQuery(cursor="not-ours!"))


def test_ack_keeps_the_first_operator(store: Store, clock: FrozenClock) -> None:
    store_alerts(store, [alert(1)])
    first = store.ack_alert("alert-n1-0001", "alice")
    clock.now = T0 + timedelta(minutes=5)
    again = store.ack_alert("alert-n1-0001", "bob")
    assert first is not None and again is not None
    assert again["acked_by"] == "alice" and again["acked_at"] == T0.isoformat()
    assert store.ack_alert("no-such-alert", "bob") is None
    assert store.alerts(AlertQuery(acked=False))[0] == []


def test_a_status_that_arrived_earlier_does_not_roll_the_state_back(store: Store) -> None:
    """Another replica may commit late what it received first: arrival order, on our clock, decides."""
    online = Status(node_id="n1", site="s1", seq=5, ts=T0, state="online")
    offline_earlier = Status(node_id="n1", site="s1", seq=1, ts=T0 + timedelta(seconds=5), state="offline")
    with store.engine.begin() as conn:
        store.record_status(conn, online, T0 + timedelta(seconds=1))
        store.record_status(conn, offline_earlier, T0)
    assert store.nodes(30, 3)[0]["state"] == "online"


def test_a_heartbeat_or_status_dated_9999_does_not_freeze_the_record(store: Store) -> None:
    forged = datetime(9999, 12, 31, tzinfo=UTC)
    with store.engine.begin() as conn:
        store.record_status(conn, Status(node_id="n1", site="s1", seq=1, ts=forged, state="offline"), T0)
        store.record_heartbeat(conn, Heartbeat(node_id="n1", site="s1", seq=2, ts=forged, uptime_s=1), T0)
    later = T0 + timedelta(seconds=30)
    with store.engine.begin() as conn:
        store.record_status(conn, Status(node_id="n1", site="s1", seq=3, ts=later, state="online"), later)
        store.record_heartbeat(conn, Heartbeat(node_id="n1", site="s1", seq=4, ts=later, uptime_s=30), later)
    node = store.nodes(30, 3)[0]
    assert (node["state"], node["health"]["uptime_s"], node["heartbeat_ts"]) == ("online", 30.0, later.isoformat())


def test_a_node_goes_stale_when_heartbeats_stop(store: Store, clock: FrozenClock) -> None:
    with store.engine.begin() as conn:
        store.record_status(conn, Status(node_id="n1", site="s1", seq=0, ts=T0, state="online"), T0)
        for i in range(2):
            beat = Heartbeat(node_id="n1", site="s1", seq=1 + i, ts=T0 + timedelta(seconds=10 * i), uptime_s=10 * i)
            store.record_heartbeat(conn, beat, T0 + timedelta(seconds=10 * i))
    node = store.nodes(default_interval_s=30, stale_factor=3)[0]
    assert node["heartbeat_interval_s"] == 10  # learnt from two heartbeats, not the 30 s default
    clock.now = T0 + timedelta(seconds=10 + 29)
    assert store.nodes(30, 3)[0]["stale"] is False
    clock.now = T0 + timedelta(seconds=10 + 31)
    assert store.nodes(30, 3)[0]["stale"] is True
    assert store.nodes(30, 3)[0]["health"] == {"uptime_s": 10.0, "sensors": {}}


def beats_at(store: Store, *seconds: float) -> None:
    with store.engine.begin() as conn:
        store.record_status(conn, Status(node_id="n1", site="s1", seq=0, ts=T0, state="online"), T0)
    for i, second in enumerate(seconds):
        at = T0 + timedelta(seconds=second)
        with store.engine.begin() as conn:
            store.record_heartbeat(conn, Heartbeat(node_id="n1", site="s1", seq=1 + i, ts=at, uptime_s=second), at)


def test_two_heartbeats_a_moment_apart_at_a_restart_do_not_make_the_node_stale(
    store: Store, clock: FrozenClock
) -> None:
    beats_at(store, 0, 30, 60, 90, 90.5)  # every 30 s, then a restart's two heartbeats 0.5 s apart
    assert store.nodes(30, 3)[0]["heartbeat_interval_s"] == pytest.approx(22.5)
    clock.now = T0 + timedelta(seconds=93)
    assert store.nodes(30, 3)[0]["stale"] is False  # it was stale after 1.4 s


def test_one_stall_does_not_hide_a_dead_node_for_minutes(store: Store, clock: FrozenClock) -> None:
    beats_at(store, 0, 30, 60, 100)  # every 30 s, one stall of 40 s, then dead
    interval = store.nodes(30, 3)[0]["heartbeat_interval_s"]
    assert interval == pytest.approx(35.0)
    clock.now = T0 + timedelta(seconds=100 + 3 * 35 + 1)
    assert store.nodes(30, 3)[0]["stale"] is True  # it took 3 × 40 s
    beats_at(store, 400)  # back after 300 s of silence: one gap moves it by half at most
    assert store.nodes(30, 3)[0]["heartbeat_interval_s"] == pytest.approx(52.5)


def test_an_interval_learnt_wrong_comes_right_within_a_few_heartbeats(store: Store, clock: FrozenClock) -> None:
    """A new node restarted 2 s after its first heartbeat, then beat every 30 s: the 2 s
    learnt first must not stay (ignoring every gap over 3 times it, it stayed for good)."""
    beats_at(store, 0, 2, *(2 + 30 * i for i in range(1, 12)))
    assert store.nodes(30, 3)[0]["heartbeat_interval_s"] == pytest.approx(30.0, rel=0.05)
    clock.now = T0 + timedelta(seconds=2 + 30 * 11 + 40)
    assert store.nodes(30, 3)[0]["stale"] is False


def test_an_offline_node_is_not_stale(store: Store, clock: FrozenClock) -> None:
    with store.engine.begin() as conn:
        store.record_status(conn, Status(node_id="n1", site="s1", seq=0, ts=T0, state="offline"), T0)
    clock.now = T0 + timedelta(hours=2)
    assert store.nodes(30, 3)[0]["stale"] is False


def test_a_command_shows_its_result(store: Store) -> None:
    store.record_command(
        {"id": "cmd-00000001", "site": "s1", "node_id": "n1", "name": "ping", "args": {}, "issuer": "aggregator",
         "issued_at": T0, "expires": T0 + timedelta(minutes=5)}
    )  # fmt: skip
    assert store.commands_for("s1", "n1")[0]["result"] is None
    result = CommandResult(node_id="n1", site="s1", seq=9, cmd_id="cmd-00000001", name="ping", ok=True, detail="pong")
    with store.engine.begin() as conn:
        store.record_cmd_result(conn, result, T0)
        store.record_cmd_result(conn, result, T0)  # redelivered: still one result
    shown = store.commands_for("s1", "n1")
    assert shown[0]["result"]["ok"] is True and shown[0]["result"]["detail"] == "pong"


def test_only_the_addressed_node_can_answer_a_command(store: Store) -> None:
    store.record_command(
        {"id": "cmd-00000002", "site": "s1", "node_id": "n1", "name": "ping", "args": {}, "issuer": "aggregator",
         "issued_at": T0, "expires": T0 + timedelta(minutes=5)}
    )  # fmt: skip
    # n2 answers n1's command, later than n1 does: it came on n2's topic, so it is not n1's answer.
    for node, detail, at in (("n1", "pong", T0), ("n2", "forged", T0 + timedelta(seconds=1))):
        answer = CommandResult(
            node_id=node, site="s1", seq=9, cmd_id="cmd-00000002", name="ping", ok=True, detail=detail
        )
        with store.engine.begin() as conn:
            store.record_cmd_result(conn, answer, at)
    assert store.commands_for("s1", "n1")[0]["result"]["detail"] == "pong"


def test_schema_is_refused_for_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", schema="s")
