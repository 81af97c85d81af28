"""``GET /api/nodes`` pages the fleet as ``/api/alerts`` and ``/api/incidents`` do (``limit``,
``cursor``, ``next_cursor``) and filters it by site and condition, over a real store (SQLite;
PostgreSQL where it runs), written through the writer's own commit, read through the app's own
test client."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from s4edge.cloud_sync.aggregator.api import build_api
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.writer import BatchWriter
from s4edge.cloud_sync.messages import Alert, AnyMessage, Heartbeat, Location, Status, encode, topic_for

NOW = datetime(2026, 5, 1, 14, 0, tzinfo=UTC)
SITES = ("depot", "metro", "plaza")
CONDITIONS = ("online", "stale", "offline", "unknown")
FLEET = 250  # more than the default page (100), in three sites and four conditions


def key(node: dict[str, Any]) -> str:
    return f"{node['site']}/{node['node_id']}"


def expected_fleet() -> dict[str, tuple[str, str, str]]:
    """site/node → (site, node, condition), in the API's order."""
    made = {}
    for i in range(FLEET):
        site, node = SITES[i % len(SITES)], f"n{i:03d}"
        made[f"{site}/{node}"] = (site, node, CONDITIONS[i % len(CONDITIONS)])
    return dict(sorted(made.items()))


def position(i: int) -> Location:
    return Location(lat=48.0 + i / 1000, lon=16.0, zone=f"hall {i}")


def located_alert(site: str, node: str, location: Location) -> Alert:
    return Alert(
        id=f"alert-{site}-{node}", node_id=node, site=site, seq=2, ts=NOW, kind="gas", severity="Minor",
        state="new", incident=f"inc-{site}-{node}", location=location,
    )  # fmt: skip


def written(store: Store, messages: list[AnyMessage], at: datetime) -> None:
    """Through the writer's own commit, as ingest writes them, received at ``at``."""
    outcome = BatchWriter(store).write([(topic_for(m), encode(m), at) for m in messages])
    assert outcome is not None and not outcome.rejects, outcome


def fill_fleet(store: Store) -> None:
    """Online: its status came now. Stale: online, but its status came 10 minutes ago and no
    heartbeat since (3 × 30 s allowed). Offline: it said so. Unknown: heartbeats, no status.
    Every tenth node has sent an alert, which gives it its position."""
    fresh: list[AnyMessage] = []
    old: list[AnyMessage] = []
    for i, (site, node, condition) in enumerate(expected_fleet().values()):
        if condition == "online":
            fresh.append(Status(node_id=node, site=site, seq=1, ts=NOW, state="online"))
        elif condition == "stale":
            old.append(Status(node_id=node, site=site, seq=1, ts=NOW - timedelta(minutes=10), state="online"))
        elif condition == "offline":
            fresh.append(Status(node_id=node, site=site, seq=1, ts=NOW, state="offline"))
        else:
            fresh.append(Heartbeat(node_id=node, site=site, seq=1, ts=NOW, uptime_s=60))
        if i % 10 == 0:
            fresh.append(located_alert(site, node, position(i)))
    written(store, old, NOW - timedelta(minutes=10))
    written(store, fresh, NOW)


@pytest.fixture
def store(store_db: tuple[str, str | None]) -> Iterator[Store]:
    engine = make_engine(*store_db)
    created = Store(engine, clock=lambda: NOW)
    created.create_all()
    fill_fleet(created)
    yield created
    engine.dispose()


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(build_api(store, EventBus(), IngestMetrics(), None), base_url="http://127.0.0.1:8080")


def walk(client: TestClient, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page, following next_cursor as received until it is null."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        response = client.get("/api/nodes", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["nodes"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) <= FLEET, "the cursor does not move on"


def test_paging_walks_the_whole_fleet_once_in_a_stable_order(client: TestClient) -> None:
    fleet = expected_fleet()
    pages = walk(client, limit=7)
    walked = [key(n) for page in pages for n in page]
    assert walked == list(fleet)  # each node once, by site then node
    assert [len(page) for page in pages] == [7] * (FLEET // 7) + [FLEET % 7]
    assert [n["condition"] for page in pages for n in page] == [c for _, _, c in fleet.values()]
    assert walk(client, limit=7) == pages  # the same walk again: the same pages
    # each node's position from its own alert, on whichever page it falls
    located = {key(n): n["location"] for page in pages for n in page if n["location"]}
    assert located == {k: position(i).model_dump() for i, k in enumerate(fleet) if i % 10 == 0}

    one_page = client.get("/api/nodes", params={"limit": 1000}).json()
    assert [key(n) for n in one_page["nodes"]] == walked and one_page["next_cursor"] is None


def test_the_default_page_keeps_the_old_shape_and_says_there_is_more(client: TestClient) -> None:
    body = client.get("/api/nodes").json()
    assert [key(n) for n in body["nodes"]] == list(expected_fleet())[:100]  # like /api/alerts: 100
    assert body["next_cursor"]
    rest = client.get("/api/nodes", params={"cursor": body["next_cursor"]}).json()
    assert [key(n) for n in rest["nodes"]] == list(expected_fleet())[100:200]


def test_a_node_that_joins_or_changes_mid_walk_moves_no_other(store: Store, client: TestClient) -> None:
    first = client.get("/api/nodes", params={"limit": 50}).json()
    # a node that sorts before the cursor joins; nodes not yet walked change state and send heartbeats
    later = [site_node for site_node in expected_fleet().values()][60:70]
    written(
        store,
        [
            Status(node_id="n000", site="aaa", seq=1, ts=NOW, state="online"),
            Status(node_id="zzz", site="zzz", seq=1, ts=NOW, state="online"),
            *(Status(node_id=node, site=site, seq=5, ts=NOW, state="offline") for site, node, _ in later),
            *(Heartbeat(node_id=node, site=site, seq=6, ts=NOW, uptime_s=9) for site, node, _ in later),
        ],
        NOW,
    )
    rest = walk(client, limit=50, cursor=first["next_cursor"])
    walked = [key(n) for n in first["nodes"]] + [key(n) for page in rest for n in page]
    assert walked == [*expected_fleet(), "zzz/zzz"]  # the one behind the cursor waits for the next walk


@pytest.mark.parametrize("site", [None, *SITES])
def test_filters_by_site_and_condition_page_like_the_whole_list(client: TestClient, site: str | None) -> None:
    fleet = expected_fleet()
    for condition in CONDITIONS:
        params = {"condition": condition, **({"site": site} if site else {})}
        pages = walk(client, limit=9, **params)
        assert all(len(page) == 9 for page in pages[:-1])
        walked = [n for page in pages for n in page]
        assert [key(n) for n in walked] == [
            k for k, (s, _, c) in fleet.items() if c == condition and site in (None, s)
        ], params
        assert {n["condition"] for n in walked} == {condition}
    only_site = [key(n) for page in walk(client, limit=40, **({"site": site} if site else {})) for n in page]
    assert only_site == [k for k, (s, _, _) in fleet.items() if site in (None, s)]


def test_no_node_matches_an_unknown_site(client: TestClient) -> None:
    for site in ("nowhere", "x" * 200, "plaza'; DROP TABLE nodes; --"):
        assert client.get("/api/nodes", params={"site": site}).json() == {"nodes": [], "next_cursor": None}
    assert len(client.get("/api/nodes", params={"limit": 1000}).json()["nodes"]) == FLEET


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_bad_limits_conditions_and_cursors_are_a_clear_422(client: TestClient) -> None:
    for limit, says in (("0", "greater than or equal to 1"), ("-5", "greater than or equal to 1"),
                        ("1001", "less than or equal to 1000"), ("ten", "valid integer")):  # fmt: skip
        response = client.get("/api/nodes", params={"limit": limit})
        assert response.status_code == 422, limit
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "limit"] and says in error["msg"], error

    response = client.get("/api/nodes", params={"condition": "asleep"})
    assert response.status_code == 422
    assert response.json()["detail"] == "condition must be one of online, stale, offline, unknown"

    not_ours = [
        "not a cursor!", "4pyT", cursor_of(["plaza"]), cursor_of([1, 2]), cursor_of({"site": "plaza"}),
        cursor_of(["plaza", "n\x00"]), cursor_of(["x" * 65, "n1"]), cursor_of(["\udcff", "n1"]),
        base64.urlsafe_b64encode(b"[" * 5000).decode(),  # nested past the JSON decoder's depth: a 500
    ]  # fmt: skip
    for cursor in not_ours:
        response = client.get("/api/nodes", params={"cursor": cursor})
        assert response.status_code == 422, cursor
        assert "bad cursor" in response.json()["detail"] and "next_cursor" in response.json()["detail"]
