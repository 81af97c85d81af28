"""The operator's console's API over a real store (SQLite; PostgreSQL where it runs): incidents
rolled up from alerts, their filters and cursor, acknowledging an incident, nodes at a glance,
and the sensor trends that the writer downsamples in its commit."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from s4edge.cloud_sync.aggregator import incidents as incidents_module
from s4edge.cloud_sync.aggregator.api import build_api, mount_dashboard
from s4edge.cloud_sync.aggregator.console_api import ConsoleSettings, TileUrlError, check_tile_url
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.node_health import parse_stages
from s4edge.cloud_sync.aggregator.retention import Retention
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.writer import BatchWriter
from s4edge.cloud_sync.messages import (
    Alert,
    AlertState,
    Heartbeat,
    Location,
    Measurement,
    Severity,
    Status,
    Telemetry,
    encode,
    topic_for,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # as tests/conftest.py's pg_schema
NOW = T0 + timedelta(hours=2)
TOKEN = "console-token-9"


class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.published.append((event, data))
        super().publish(event, data)


def alert(
    incident: str, step: int, state: AlertState, severity: Severity, *, kind: str = "gas", node: str = "n1",
    site: str = "plaza", minutes: float = 0, title: str | None = "gas 12 %LEL", zone: str | None = "boiler room",
) -> Alert:  # fmt: skip
    return Alert(
        id=f"{incident}-{step:02d}", node_id=node, site=site, seq=step, ts=T0 + timedelta(minutes=minutes),
        kind=kind, severity=severity, state=state, incident=incident,
        location=Location(lat=48.2082, lon=16.3738, zone=zone), title=title,
        measurements=[Measurement(quantity="flammable_gas", value=12.0 + step, unit="%LEL", sensor="mq2")],
    )  # fmt: skip


# Four incidents: gas (open, escalated Moderate → Severe), flame with no title (open), crowd
# (ended), smoke on another site and node (ended, the latest).
ALERTS = [
    alert("inc-gas-0001", 0, "new", "Moderate", minutes=0),
    alert("inc-gas-0001", 1, "update", "Severe", minutes=5, title=None),
    alert("inc-flame-001", 0, "new", "Extreme", kind="flame", minutes=10, title=None),
    alert("inc-crowd-001", 0, "new", "Minor", kind="crowd", minutes=1, title="crowd building up"),
    alert("inc-crowd-001", 1, "end", "Minor", kind="crowd", minutes=3, title=None),
    alert("inc-smoke-001", 0, "new", "Severe", kind="smoke", node="n2", site="metro", minutes=20, title="smoke"),
    alert("inc-smoke-001", 1, "end", "Severe", kind="smoke", node="n2", site="metro", minutes=30, title="smoke"),
]


def filled(store: Store, items: list[Any], at: datetime = NOW) -> None:
    """Through the writer's own commit, as ingest writes them."""
    outcome = BatchWriter(store).write([(topic_for(m), encode(m), at) for m in items])
    assert outcome is not None and not outcome.rejects, outcome


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    else:  # a fresh schema on the local PostgreSQL (conftest), skipped when it is unreachable
        engine = make_engine(POSTGRES, schema=request.getfixturevalue("pg_schema"))
    created = Store(engine, clock=lambda: NOW)
    created.create_all()
    filled(created, ALERTS)
    yield created
    engine.dispose()


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


def client_for(store: Store, bus: EventBus, **settings: Any) -> TestClient:
    app = build_api(store, bus, IngestMetrics(), None, console=ConsoleSettings(**settings))
    mount_dashboard(app)
    return TestClient(app, base_url="http://127.0.0.1:8080")


@pytest.fixture
def client(store: Store, bus: RecordingBus) -> TestClient:
    return client_for(store, bus)


def ids(body: dict[str, Any]) -> list[str]:
    return [i["incident"] for i in body["incidents"]]


def test_an_end_stamped_before_its_update_still_ends_the_incident(store: Store, client: TestClient) -> None:
    # the node's clock stepped back 15 minutes between the update and the end: by ts the end
    # came first, and the incident stayed open for good, its timeline out of order
    filled(store, [
        alert("inc-step-0001", 0, "new", "Severe", minutes=40),
        alert("inc-step-0001", 1, "update", "Severe", minutes=50),
        alert("inc-step-0001", 2, "end", "Severe", minutes=35),
    ])  # fmt: skip
    assert "inc-step-0001" in ids(client.get("/api/incidents", params={"state": "ended"}).json())
    assert "inc-step-0001" not in ids(client.get("/api/incidents", params={"state": "open"}).json())
    record = client.get("/api/incidents/inc-step-0001").json()
    assert record["state"] == "ended" and [a["state"] for a in record["timeline"]] == ["new", "update", "end"]
    assert (record["first_seen"], record["last_seen"]) == (
        (T0 + timedelta(minutes=35)).isoformat(),
        (T0 + timedelta(minutes=50)).isoformat(),
    )


def test_an_end_and_an_update_of_one_moment_read_the_same_in_list_and_record(store: Store, client: TestClient) -> None:
    # the list took the end (the latest ts), the record the update (the last by ts, then id)
    filled(store, [
        alert("inc-tie-00001", 0, "new", "Minor", minutes=40),
        alert("inc-tie-00001", 1, "end", "Minor", minutes=41),
        alert("inc-tie-00001", 2, "update", "Minor", minutes=41),
    ])  # fmt: skip
    opened = client.get("/api/incidents", params={"state": "open"}).json()
    assert "inc-tie-00001" in ids(opened) and opened["open"] == opened["total"] == 3
    assert client.get("/api/incidents/inc-tie-00001").json()["state"] == "open"


def test_an_incident_continued_after_its_end_is_open_again(store: Store, client: TestClient) -> None:
    """A re-trigger within the node's cooldown continues an ended incident with an update
    (edge/alerts.py): its last message decides its state, in the list and in the filters."""
    filled(store, [alert("inc-crowd-001", 2, "update", "Minor", kind="crowd", minutes=4, title="crowd again")])
    crowd = next(i for i in client.get("/api/incidents").json()["incidents"] if i["incident"] == "inc-crowd-001")
    assert (crowd["state"], crowd["alerts"]) == ("open", 3)
    assert "inc-crowd-001" in ids(client.get("/api/incidents", params={"state": "open"}).json())
    assert "inc-crowd-001" not in ids(client.get("/api/incidents", params={"state": "ended"}).json())


def test_one_record_per_incident_open_first_then_latest(client: TestClient) -> None:
    body = client.get("/api/incidents").json()
    assert ids(body) == ["inc-flame-001", "inc-gas-0001", "inc-smoke-001", "inc-crowd-001"]
    assert (body["total"], body["open"], body["next_cursor"]) == (4, 2, None)
    assert client.get("/api/incidents", params={"cursor": ""}).json() == body  # an empty cursor: the first page
    gas = body["incidents"][1]
    assert gas["first_seen"] == T0.isoformat() and gas["last_seen"] == (T0 + timedelta(minutes=5)).isoformat()
    assert (gas["severity"], gas["peak_severity"], gas["state"]) == ("Severe", "Severe", "open")
    assert gas["title"] == "gas 12 %LEL" and gas["title_from_node"]  # the update had none: the last given stands
    assert (gas["alerts"], gas["updates"], gas["alert_ids"]) == (2, 1, ["inc-gas-0001-00", "inc-gas-0001-01"])
    assert (gas["acked_at"], gas["ng112"]) == (None, None)
    assert (gas["lat"], gas["lon"], gas["zone"]) == (48.2082, 16.3738, "boiler room")
    crowd = body["incidents"][3]
    assert (crowd["state"], crowd["updates"], crowd["alerts"]) == ("ended", 0, 2)


def test_a_flame_alert_with_no_title_gets_one_from_its_kind_and_zone(client: TestClient) -> None:
    flame = client.get("/api/incidents/inc-flame-001").json()
    assert flame["title"] == "Flame detected — boiler room" and not flame["title_from_node"]
    (only,) = client.get("/api/alerts", params={"incident": "inc-flame-001"}).json()["alerts"]
    assert only["title"] is None and only["headline"] == "Flame detected — boiler room"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "open"}, ["inc-flame-001", "inc-gas-0001"]),
        ({"state": "ended"}, ["inc-smoke-001", "inc-crowd-001"]),
        ({"severity": "Severe"}, ["inc-flame-001", "inc-gas-0001", "inc-smoke-001"]),  # its peak counts
        ({"severity": "Extreme"}, ["inc-flame-001"]),
        ({"kind": "crowd"}, ["inc-crowd-001"]),
        ({"site": "metro"}, ["inc-smoke-001"]),
        ({"site": "plaza", "node": "n1", "state": "ended"}, ["inc-crowd-001"]),
        ({"from": "2026-05-01T12:04:00Z"}, ["inc-flame-001", "inc-gas-0001", "inc-smoke-001"]),  # seen since
        ({"to": "2026-05-01T12:02:00Z"}, ["inc-gas-0001", "inc-crowd-001"]),  # begun by
        ({"from": "2026-05-01T12:04:00Z", "to": "2026-05-01T12:15:00Z"}, ["inc-flame-001", "inc-gas-0001"]),
        ({"incident": ["inc-crowd-001", "inc-gas-0001"]}, ["inc-gas-0001", "inc-crowd-001"]),
    ],
)
def test_filters(client: TestClient, params: dict[str, Any], expected: list[str]) -> None:
    body = client.get("/api/incidents", params=params).json()
    assert ids(body) == expected and body["total"] == len(expected)


def cursor_of(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"state": "closed"}, "state must be one of open, ended"),
        ({"severity": "Loud"}, "severity must be one of"),
        ({"from": "2026-05-01T12:00:00"}, "from needs a timezone"),
        ({"cursor": "garbage"}, "bad cursor"),
        # a number past any column's range once reached the driver: 500
        ({"cursor": cursor_of([10**20, "2026-05-01T12:00:00+00:00", "x"])}, "bad cursor"),
        ({"cursor": cursor_of([0, "2026-05-01T12:00:00+00:00", 7])}, "bad cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"[" * 5000).decode()}, "bad cursor"),  # past JSON's depth: 500
        ({"limit": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_incident_queries_are_422_with_a_reason(client: TestClient, params: dict[str, Any], says: str) -> None:
    response = client.get("/api/incidents", params=params)
    assert response.status_code == 422 and says in str(response.json()["detail"])


def test_the_cursor_pages_through_every_incident_in_order_once(store: Store, client: TestClient) -> None:
    # more incidents, some seen at the same moment, so that the cursor's tie-break is exercised
    filled(store, [alert(f"inc-more-{i:04d}", 0, "new", "Minor", minutes=40 + i // 3) for i in range(23)])
    whole = ids(client.get("/api/incidents", params={"limit": 500}).json())
    seen, cursor = [], None
    while True:
        body = client.get("/api/incidents", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
        seen += ids(body)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == whole and len(seen) == len(set(seen)) == 27
    assert whole[:2] == ["inc-more-0022", "inc-more-0021"]  # same last seen: by id, descending


def test_acknowledging_acts_on_the_incident_and_is_kept_once(client: TestClient, bus: RecordingBus) -> None:
    done = client.post("/api/incidents/inc-gas-0001/ack", json={"by": "dispatcher-7"}).json()
    assert (done["acked_by"], done["acked_at"], done["acked_severity"]) == ("dispatcher-7", NOW.isoformat(), "Severe")
    assert done["alert_ids"] == ["inc-gas-0001-00", "inc-gas-0001-01"]
    assert bus.published[-1] == ("ack", done)
    again = client.post("/api/incidents/inc-gas-0001/ack", json={"by": "eve"}).json()
    assert again["acked_by"] == "dispatcher-7"
    record = client.get("/api/incidents/inc-gas-0001").json()
    assert record["acked_by"] == "dispatcher-7" and not record["escalated_since_ack"]
    assert {a["acked_by"] for a in record["timeline"]} == {"dispatcher-7"}  # its alerts too
    assert client.post("/api/incidents/no-such-incident/ack").status_code == 404
    # the old per-alert ack still acts on one alert
    assert client.post("/api/alerts/inc-crowd-001-00/ack", json={"by": "bob"}).json()["acked_by"] == "bob"
    assert client.get("/api/incidents/inc-crowd-001").json()["acked_at"] is None


@pytest.mark.parametrize("by", ["eve\x00", "eve\nacked by dispatcher-7", "eve\u2028x", "eve\x85x", ""])
@pytest.mark.parametrize("path", ["/api/incidents/inc-gas-0001/ack", "/api/alerts/inc-crowd-001-00/ack"])
def test_an_operator_name_that_is_not_printable_text_is_refused(client: TestClient, path: str, by: str) -> None:
    # a NUL was a 500 from PostgreSQL, and stored as is by SQLite
    response = client.post(path, json={"by": by})
    assert response.status_code == 422, response.text
    assert client.get("/api/incidents/inc-gas-0001").json()["acked_by"] is None


def test_an_incident_that_grows_worse_after_its_ack_says_so(store: Store, client: TestClient) -> None:
    client.post("/api/incidents/inc-gas-0001/ack", json={"by": "dispatcher-7"})
    filled(store, [alert("inc-gas-0001", 2, "update", "Extreme", minutes=8)])
    record = client.get("/api/incidents/inc-gas-0001").json()
    assert record["escalated_since_ack"] and record["peak_severity"] == "Extreme"
    assert [a["acked_by"] for a in record["timeline"]] == ["dispatcher-7", "dispatcher-7", None]
    # acknowledged again, it is acknowledged as it is now (it stayed "worse since" for good)
    again = client.post("/api/incidents/inc-gas-0001/ack", json={"by": "bob"}).json()
    assert (again["acked_by"], again["acked_severity"]) == ("bob", "Extreme")
    record = client.get("/api/incidents/inc-gas-0001").json()
    assert not record["escalated_since_ack"] and record["acked_by"] == "bob"
    assert [a["acked_by"] for a in record["timeline"]] == ["dispatcher-7", "dispatcher-7", "bob"]


def test_an_incident_kept_open_for_days_answers_in_bounded_size(
    store: Store, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a node that updates one incident every 30 s for a day: every alert of it in each answer
    monkeypatch.setattr(incidents_module, "TIMELINE_MAX", 5)
    monkeypatch.setattr(incidents_module, "ALERT_IDS_MAX", 4)
    long = [alert("inc-long-0001", 0, "new", "Severe", minutes=40)]
    long += [alert("inc-long-0001", i, "update", "Severe", minutes=40 + i / 10) for i in range(1, 12)]
    filled(store, long)
    body = client.get("/api/incidents/inc-long-0001").json()
    assert (body["alerts"], body["updates"], body["timeline_omitted"]) == (12, 11, 7)
    assert [a["id"] for a in body["timeline"]] == [
        "inc-long-0001-00",
        *(f"inc-long-0001-{i:02d}" for i in range(8, 12)),
    ]
    assert body["alert_ids"] == ["inc-long-0001-00", "inc-long-0001-09", "inc-long-0001-10", "inc-long-0001-11"]
    listed = next(i for i in client.get("/api/incidents").json()["incidents"] if i["incident"] == "inc-long-0001")
    assert listed["alert_ids"] == body["alert_ids"]
    assert client.post("/api/incidents/inc-long-0001/ack", json={"by": "op"}).json()["alert_ids"] == body["alert_ids"]


def test_acknowledging_needs_the_token_where_one_is_set(store: Store) -> None:
    app = build_api(store, EventBus(), IngestMetrics(), None, operator_token=TOKEN)
    client = TestClient(app, base_url="http://127.0.0.1:8080")
    refused = client.post("/api/incidents/inc-gas-0001/ack", json={"by": "eve"})
    assert refused.status_code == 401 and "operator token" in refused.json()["detail"]
    assert client.get("/api/incidents/inc-gas-0001").json()["acked_at"] is None
    wrong = client.post("/api/incidents/inc-gas-0001/ack", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/api/incidents/inc-gas-0001/ack", json={"by": "al"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["acked_by"] == "al"
    assert client.get("/api/console").json()["token_required"] is True


def telemetry(node: str, minutes: float, **values: tuple[float, str]) -> Telemetry:
    readings = [Measurement(quantity=q, value=v, unit=u, sensor="s1") for q, (v, u) in values.items()]
    return Telemetry(node_id=node, site="plaza", seq=100 + int(minutes * 10), ts=T0 + timedelta(minutes=minutes),
                     readings=readings)  # fmt: skip


def test_telemetry_is_kept_downsampled_and_served_with_thresholds(store: Store, client: TestClient) -> None:
    # two messages in one minute (one batch), a third in the same minute later, and one a minute on
    filled(store, [telemetry("n1", 0.1, co=(10.0, "ppm"), temperature=(21.0, "Cel")),
                   telemetry("n1", 0.5, co=(30.0, "ppm"))])  # fmt: skip
    filled(store, [telemetry("n1", 0.9, co=(20.0, "ppm")), telemetry("n1", 1.2, co=(5.0, "ppm"))])
    filled(store, [telemetry("n2", 0.2, co=(999.0, "ppm"))])  # another node's stays its own
    body = client.get("/api/nodes/plaza/n1/telemetry", params={"quantity": "co", "from": T0.isoformat()}).json()
    (co,) = body["series"]
    start = int(T0.timestamp())
    assert (co["quantity"], co["sensor"], co["unit"], co["family"]) == ("co", "s1", "ppm", "co")
    assert co["t"] == [start, start + 60] and body["step_s"] == 60
    assert co["min"] == [10.0, 5.0] and co["max"] == [30.0, 5.0] and co["mean"] == [20.0, 5.0]
    assert [t["value"] for t in co["thresholds"]] == [50.0, 100.0, 300.0]  # EN 50291-1's alarm points
    every = client.get("/api/nodes/plaza/n1/telemetry", params={"from": T0.isoformat()}).json()
    assert [(s["quantity"], s["family"]) for s in every["series"]] == [("co", "co"), ("temperature", "temperature")]
    assert client.get("/api/nodes/plaza/n1/telemetry").json()["series"] == every["series"]  # the last 6 h by default
    first = client.get("/api/nodes/plaza/n1/telemetry", params={"from": T0.isoformat(), "to": "2026-05-01T12:00:30Z"})
    assert [s["t"] for s in first.json()["series"]] == [[start], [start]]
    week = client.get("/api/nodes/plaza/n1/telemetry", params={"from": (NOW - timedelta(days=7)).isoformat()}).json()
    assert week["step_s"] == 840 and week["series"][0]["max"] == [30.0]  # merged into fewer, wider buckets
    bad = client.get("/api/nodes/plaza/n1/telemetry", params={"from": NOW.isoformat(), "to": T0.isoformat()})
    assert bad.status_code == 422 and "from must be before to" in bad.json()["detail"]


def test_the_trends_are_pruned_after_the_retention(store: Store, client: TestClient) -> None:
    # at 12:00, 12:30 and 13:30; it is 14:00 and an hour is kept: the first two go
    filled(store, [telemetry("n1", m, co=(10.0 + m, "ppm")) for m in (0, 30, 90)])
    retention = Retention(store.engine, retention_s=3600, clock=lambda: NOW)
    assert retention.prune_once() == 2
    assert retention.prune_once() == 0
    body = client.get("/api/nodes/plaza/n1/telemetry", params={"from": T0.isoformat()}).json()
    assert body["series"][0]["mean"] == [100.0]


def test_nodes_at_a_glance(store: Store, client: TestClient) -> None:
    stages = str({"motion": 0.57, "infer": 41.25, "track": 1.5e-1})  # the text of a dict, as the node sends it
    beat = Heartbeat(
        node_id="n1", site="plaza", seq=2, ts=NOW, uptime_s=50, cpu_percent=95.0, camera_fps=14.8, inference_ms=41.0,
        outbox_depth=3, soc_temp_c=61.0,
        sensors={"cam0": "ok", "cam0.stages_ms": stages, "gas-1": "fault: CRC mismatch"},
    )  # fmt: skip
    filled(store, [Status(node_id="n1", site="plaza", seq=1, ts=NOW, state="online", degraded=["gas-1"]), beat])
    nodes = {f"{n['site']}/{n['node_id']}": n for n in client.get("/api/nodes").json()["nodes"]}
    n1 = nodes["plaza/n1"]
    assert n1["condition"] == "online" and n1["stages_ms"] == {"cam0": {"motion": 0.57, "infer": 41.25, "track": 0.15}}
    assert n1["vitals"]["camera_fps"] == 14.8 and n1["vitals"]["outbox_depth"] == 3
    assert n1["parts"] == {"cam0": "ok", "gas-1": "fault: CRC mismatch"}
    assert n1["problems"] == [
        {"part": "gas-1", "reason": "degraded: fault: CRC mismatch"},
        {"part": "board", "reason": "CPU at 95 %"},
    ]
    assert n1["location"] == {"lat": 48.2082, "lon": 16.3738, "zone": "boiler room"}  # from its latest alert
    assert nodes["metro/n2"]["condition"] == "unknown"  # alerts only: no status yet
    assert nodes["metro/n2"]["problems"] == [{"part": "node", "reason": "no status received yet"}]
    assert client.get("/api/nodes/plaza/n1").json()["stages_ms"] == n1["stages_ms"]
    assert client.get("/api/nodes/plaza/nobody").status_code == 404


def test_a_node_whose_clock_is_off_shows_it_as_a_problem(store: Store, client: TestClient) -> None:
    """Its heartbeat, sent live, dated a year before it arrived: the node's incidents sort by that clock."""
    late = Heartbeat(node_id="n1", site="plaza", seq=2, ts=NOW - timedelta(days=365), uptime_s=50)
    filled(store, [Status(node_id="n1", site="plaza", seq=1, ts=NOW, state="online"), late])
    n1 = client.get("/api/nodes/plaza/n1").json()
    assert n1["clock_offset_s"] == -365 * 86400
    assert {"part": "clock", "reason": "365 days behind the aggregator's: its alerts are misdated (NTP?)"} in n1[
        "problems"
    ]
    on_time = Heartbeat(node_id="n1", site="plaza", seq=3, ts=NOW - timedelta(seconds=2), uptime_s=80)
    filled(store, [on_time])  # within a network's delay and NTP's error: no problem
    assert [p for p in client.get("/api/nodes/plaza/n1").json()["problems"] if p["part"] == "clock"] == []


def test_stage_timings_are_read_as_numbers_never_evaluated() -> None:
    assert parse_stages("{'motion': 0.57, 'infer': 12}") == {"motion": 0.57, "infer": 12.0}
    assert parse_stages('{"decode": 1e-2}') == {"decode": 0.01}
    assert parse_stages("__import__('os').system('true')") == {}


def test_the_page_settings_and_its_files(store: Store, bus: RecordingBus) -> None:
    plain = client_for(store, bus).get("/api/console").json()
    assert plain["tiles"] is None and plain["ng112_panel"] is None and plain["token_required"] is False
    assert [t["value"] for t in plain["thresholds"]["gas"]] == [10.0, 40.0]
    tiled = client_for(store, bus, tiles_url="https://tiles.example/{z}/{x}/{y}.png", tiles_attribution="© them")
    assert tiled.get("/api/console").json()["tiles"] == {
        "url": "https://tiles.example/{z}/{x}/{y}.png",
        "attribution": "© them",
    }
    icon = tiled.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    for path in ("/vendor/leaflet.js", "/vendor/leaflet.css", "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css"):
        assert tiled.get(path).status_code == 200, path
    page = tiled.get("/").text
    assert "vendor/leaflet.js" in page and "http://" not in page and "https://" not in page  # nothing from outside


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tiles.example/{z}/{x}/{y}.png", "give an http:// or https:// URL"),
        ("ftp://tiles.example/{z}/{x}/{y}.png", "give an http:// or https:// URL"),
        ("https://tiles.example/{z}/{x}.png", "lacks {y}"),
        # a tile service's key is not printed
        ("https://tiles.example/{z}/{x}.png?api_key=K3Y-s3cret", "'https://tiles.example/{z}/{x}.png?…' lacks {y}"),
        ("https://user:K3Y-s3cret@tiles.example/{z}/{x}.png", "'https://tiles.example/{z}/{x}.png' lacks {y}"),
    ],
)
def test_a_tile_url_the_map_cannot_use_is_refused(url: str, says: str) -> None:
    with pytest.raises(TileUrlError, match=says.replace("{", r"\{").replace("}", r"\}").replace("?", r"\?")) as refused:
        check_tile_url(url)
    assert "K3Y-s3cret" not in str(refused.value)
    check_tile_url("")
    check_tile_url("https://tiles.example/{z}/{x}/{y}.png")


def test_aggregator_run_refuses_a_tile_url_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from s4edge.cli import app

    db = f"sqlite:///{tmp_path / 'agg.db'}"
    args = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    result = CliRunner().invoke(app, [*args, "--tiles", "https://tiles.example/{z}/{x}.png"])
    assert result.exit_code == 2 and "error: --tiles" in result.output and "lacks {y}" in result.output
    assert "Traceback" not in result.output


def test_a_store_made_before_the_console_gets_its_index_at_start(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    older = Store(make_engine(f"sqlite:///{tmp_path / 'old.db'}"))
    older.create_all()
    with older.engine.begin() as conn:  # as a store made before: the old index on incident, or the ts-ordered one
        conn.execute(text("DROP INDEX ix_alerts_incident_seq"))
        conn.execute(text("CREATE INDEX ix_alerts_incident ON alerts (incident)"))
        conn.execute(text("CREATE INDEX ix_alerts_incident_rollup ON alerts (incident, ts, state, severity)"))
    older.create_all()
    names = {index["name"] for index in inspect(older.engine).get_indexes("alerts")}
    assert {"ix_alerts_incident_seq", "ix_alerts_incident"} <= names
    assert "ix_alerts_incident_rollup" not in names  # superseded: every write paid for it


def test_an_incident_shows_its_ng112_calls_most_pressing_first(store: Store, client: TestClient) -> None:
    from s4edge.cloud_sync.ng112.records import forwards  # NG112 puts its table on the store's metadata

    store.create_all()
    base = {"site": "plaza", "node_id": "n1", "kind": "gas", "severity": "Severe", "alert_state": "new",
            "status": "Actual", "alert": {}, "created_at": NOW, "due_at": NOW, "attempts": 1}  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(forwards.insert(), [
            {**base, "id": "f1", "incident": "inc-gas-0001", "alert_id": "inc-gas-0001-00", "ordinal": 0,
             "state": "delivered"},
            {**base, "id": "f2", "incident": "inc-gas-0001", "alert_id": "inc-gas-0001-01", "ordinal": 1,
             "state": "awaiting_confirm"},
        ])  # fmt: skip
    gas = client.get("/api/incidents", params={"incident": "inc-gas-0001"}).json()["incidents"][0]
    assert gas["ng112"] == {"state": "awaiting_confirm", "calls": {"delivered": 1, "awaiting_confirm": 1}}
    assert client.get("/api/incidents/inc-crowd-001").json()["ng112"] is None


def test_acknowledging_while_the_store_cannot_write_is_a_503_that_says_so(tmp_path: Path, bus: RecordingBus) -> None:
    """A read-only file or a full disk: it was a bare 500 Internal Server Error."""
    path = tmp_path / "agg.db"
    writable = Store(make_engine(f"sqlite:///{path}"), clock=lambda: NOW)
    writable.create_all()
    filled(writable, ALERTS)
    writable.engine.dispose()
    read_only = Store(make_engine(f"sqlite:///file:{path}?mode=ro&uri=true"), clock=lambda: NOW)
    client = client_for(read_only, bus)
    for path_ in ("/api/incidents/inc-gas-0001/ack", "/api/alerts/inc-crowd-001-00/ack"):
        response = client.post(path_, json={"by": "dispatcher-7"})
        assert response.status_code == 503, response.text
        assert "readonly database" in response.json()["detail"] and response.headers["retry-after"] == "5"
    assert client.get("/api/incidents/inc-gas-0001").json()["acked_at"] is None  # reads still answer
    read_only.engine.dispose()


def test_a_lone_surrogate_in_a_body_is_a_422_not_a_500(client: TestClient) -> None:
    response = client.post(
        "/api/incidents/inc-gas-0001/ack", content=b'{"by": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_an_alert_state_that_is_none_of_new_update_end_is_refused(client: TestClient) -> None:
    response = client.get("/api/alerts", params={"state": "open"})
    assert response.status_code == 422 and "new, update, end" in response.json()["detail"]
    assert client.get("/api/alerts", params={"state": "end"}).status_code == 200


@pytest.mark.parametrize("value", ["NaN", "1e400", "-Infinity"])
def test_a_command_argument_that_is_no_finite_number_is_refused(client: TestClient, value: str) -> None:
    """JSON has no NaN or infinity: the node would have got null."""
    body = f'{{"name": "ping", "args": {{"a": {value}}}}}'.encode()
    response = client.post("/api/nodes/s1/n1/commands", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "finite" in response.text


def test_alerts_are_found_by_when_they_arrived(client: TestClient) -> None:
    everything = client.get("/api/alerts", params={"limit": 1000}).json()["alerts"]
    arrived = client.get("/api/alerts", params={"received_since": "2000-01-01T00:00:00Z", "limit": 1000}).json()
    assert [a["id"] for a in arrived["alerts"]] == [a["id"] for a in everything]
    assert client.get("/api/alerts", params={"received_since": "2999-01-01T00:00:00Z"}).json()["alerts"] == []
    assert client.get("/api/alerts", params={"received_since": "2026-01-01T00:00:00"}).status_code == 422
