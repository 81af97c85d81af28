"""The HTTP API over a real SQLite store, through FastAPI's TestClient (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from s4edge.cloud_sync.aggregator.api import build_api, mount_dashboard
from s4edge.cloud_sync.aggregator.commands import CommandDesk
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.messages import Alert, Command, Location, Status, decode

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def alert(i: int) -> Alert:
    return Alert(
        id=f"alert-{i:04d}", node_id=f"n{i % 2}", site="s1", seq=i, ts=T0 + timedelta(seconds=i),
        kind="gas" if i % 3 else "smoke", severity="Severe", state="new", incident="incident-1",
        location=Location(lat=0, lon=0),
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    created = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"), clock=lambda: T0)
    created.create_all()
    with created.engine.begin() as conn:
        created.insert_alerts(conn, [(alert(i), T0) for i in range(10)])
        created.record_status(conn, Status(node_id="n1", site="s1", seq=0, state="online"), T0)  # commands go to it
    return created


@pytest.fixture
def published() -> list[tuple[str, bytes, int]]:
    return []


@pytest.fixture
def client(store: Store, published: list[tuple[str, bytes, int]]) -> TestClient:
    def publish(topic: str, payload: bytes, qos: int) -> bool:
        published.append((topic, payload, qos))
        return True

    app = build_api(store, EventBus(), IngestMetrics(), CommandDesk(store, publish, "aggregator"))
    mount_dashboard(app)
    return TestClient(app, base_url="http://127.0.0.1:8080")  # no operator token: act by address


def test_pages_through_every_alert_newest_first(client: TestClient) -> None:
    seen, cursor = [], None
    while True:
        body = client.get("/api/alerts", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
        seen += [a["id"] for a in body["alerts"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"alert-{i:04d}" for i in range(9, -1, -1)]


def test_filters_combine(client: TestClient) -> None:
    body = client.get("/api/alerts", params={"node": "n0", "kind": "smoke", "since": "2026-05-01T12:00:03Z"}).json()
    assert [a["id"] for a in body["alerts"]] == ["alert-0006"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"severity": "Loud"}, "severity must be one of"),
        ({"since": "2026-05-01T12:00:00"}, "needs a timezone"),
        ({"cursor": "garbage"}, "bad cursor"),
        ({"limit": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_queries_are_422_with_a_reason(client: TestClient, params: dict[str, object], says: str) -> None:
    response = client.get("/api/alerts", params=params)
    assert response.status_code == 422
    assert says in response.text


def test_ack_then_filter_by_acked(client: TestClient) -> None:
    acked = client.post("/api/alerts/alert-0003/ack", json={"by": "dispatcher-7"}).json()
    assert acked["acked_by"] == "dispatcher-7" and acked["acked_at"] == T0.isoformat()
    assert [a["id"] for a in client.get("/api/alerts", params={"acked": True}).json()["alerts"]] == ["alert-0003"]
    assert client.post("/api/alerts/nope-0000/ack").status_code == 404


def test_a_command_is_published_as_the_wire_contract_says(
    client: TestClient, published: list[tuple[str, bytes, int]]
) -> None:
    response = client.post("/api/nodes/s1/n1/commands", json={"name": "reload_config", "args": {"dry": True}})
    assert response.status_code == 202
    topic, payload, qos = published[0]
    command = decode(payload)
    assert isinstance(command, Command)
    assert topic == "s4edge/v1/s1/n1/cmd/reload_config" and qos == 1
    assert command.issuer == "aggregator" and command.args == {"dry": True}
    assert command.expires == T0 + timedelta(seconds=300)
    listed = client.get("/api/nodes/s1/n1/commands").json()["commands"]
    assert listed[0]["id"] == command.id and listed[0]["result"] is None
    assert client.post("/api/nodes/S1!/n1/commands", json={"name": "ping"}).status_code == 422


def test_a_command_to_a_node_never_heard_of_is_refused_not_published(
    client: TestClient, published: list[tuple[str, bytes, int]]
) -> None:
    # "published": true for a misspelt node: no session at the broker keeps it, nothing runs it
    response = client.post("/api/nodes/s1/n2/commands", json={"name": "ping"})
    assert response.status_code == 404 and "no node s1/n2 has reported" in response.json()["detail"]
    assert published == [] and client.get("/api/nodes/s1/n2/commands").json()["commands"] == []


def test_dashboard_and_metrics_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    assert "EventSource" in client.get("/app.js").text
    assert (
        "s4edge_messages_received_total" in client.get("/metrics").text
        or "s4edge_nodes_online" in client.get("/metrics").text
    )
    assert client.get("/healthz").json()["ok"] is True


def guarded(store: Store, published: list[tuple[str, bytes, int]]) -> TestClient:
    def publish(topic: str, payload: bytes, qos: int) -> bool:
        published.append((topic, payload, qos))
        return True

    app = build_api(
        store, EventBus(), IngestMetrics(), CommandDesk(store, publish, "aggregator"), operator_token="s3cret-token"
    )
    extra = APIRouter()

    @extra.post("/ng112/forwards/{forward_id}/confirm")  # a router included later, as NG112's is
    def confirm(forward_id: str) -> dict[str, str]:
        return {"confirmed": forward_id}

    app.include_router(extra)
    mount_dashboard(app)
    return TestClient(app, base_url="http://127.0.0.1:8080")  # no operator token: act by address


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic s3cret-token", "Bearer s3cret-token-and-more", "Bearer "]
)
def test_with_an_operator_token_actions_need_it(
    store: Store, published: list[tuple[str, bytes, int]], authorization: str | None
) -> None:
    client = guarded(store, published)
    headers = {"Authorization": authorization} if authorization else {}
    command = client.post("/api/nodes/s1/n1/commands", json={"name": "reload_config"}, headers=headers)
    assert command.status_code == 401 and "operator token" in command.json()["detail"]
    assert command.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/api/alerts/alert-0001/ack", json={"by": "eve"}, headers=headers).status_code == 401
    assert client.post("/ng112/forwards/f1/confirm", headers=headers).status_code == 401
    assert published == [] and store.alert("alert-0001")["acked_at"] is None  # type: ignore[index]
    assert client.get("/api/alerts").status_code == 200  # reading stays open
    assert client.get("/").status_code == 200


def test_the_right_token_lets_the_operator_act(store: Store, published: list[tuple[str, bytes, int]]) -> None:
    client = guarded(store, published)
    auth = {"Authorization": "Bearer s3cret-token"}
    assert client.post("/api/nodes/s1/n1/commands", json={"name": "ping"}, headers=auth).status_code == 202
    assert client.post("/api/alerts/alert-0001/ack", json={"by": "alice"}, headers=auth).json()["acked_by"] == "alice"
    assert client.post("/ng112/forwards/f1/confirm", headers=auth).json() == {"confirmed": "f1"}
    assert len(published) == 1


def test_the_dashboard_asks_for_the_token_when_told_401(client: TestClient) -> None:
    script = client.get("/util.js").text  # the console's modules share its authorisedFetch
    assert "status === 401" in script and "sessionStorage" in script and "Bearer" in script


@pytest.mark.parametrize(
    "path",
    [
        "/api/alerts?since=0001-01-01T00:00:00%2B01:00",  # no UTC for it: OverflowError, a 500
        "/api/incidents?from=0001-01-01T00:00:00%2B01:00",
        "/api/incidents?to=9999-12-31T23:00:00-14:00",
        "/api/nodes/s1/n1/telemetry?from=0001-01-01T00:00:00%2B01:00&to=0001-01-01T05:00:00Z",
        "/api/alerts?cursor=MDAwMS0wMS0wMVQwMDowMDowMCswMTowMHx4",  # the same time, in a cursor
        "/api/incidents?cursor=W0luZmluaXR5LCAiMjAyNi0wMS0wMVQwMDowMDowMCswMDowMCIsICJ4Il0",  # [Infinity, …]
        "/api/alerts/%00x",  # PostgreSQL refuses a NUL in a query: a 500 there
        "/api/alerts?site=%00",
        "/api/incidents?incident=x%00",
        "/ng112/incidents/x%00/readings?token=t",
    ],
)
def test_what_no_store_can_look_up_is_a_422_never_a_500(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text


def test_telemetry_up_to_the_first_hour_there_is_starts_at_the_first_instant(client: TestClient) -> None:
    response = client.get("/api/nodes/s1/n1/telemetry?to=0001-01-01T01:00:00Z")  # to - 24 h fell before year 1
    assert response.status_code == 200 and response.json()["from"] == "0001-01-01T00:00:00+00:00"
