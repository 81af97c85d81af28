"""What the operators' API keeps to itself: command history needs the operator token and holds
no credentials, and without a token a page on another site cannot make a browser act."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from s4edge.cloud_sync.aggregator.api import build_api
from s4edge.cloud_sync.aggregator.commands import CommandDesk
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.redaction import redact
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.messages import Alert, Command, CommandResult, Location, Status, decode

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = "s3cret-token"
PASSWORD = "correct horse battery staple"
CONFIG = f"node_id: n1\nmqtt:\n  url: mqtts://n1:{PASSWORD.replace(' ', '-')}@broker:8883\n  password: {PASSWORD}\n"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    created = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"), clock=lambda: T0)
    created.create_all()
    alert = Alert(
        id="alert-0001", node_id="n1", site="s1", seq=1, ts=T0, kind="gas", severity="Severe", state="new",
        incident="incident-1", location=Location(lat=0, lon=0),
    )  # fmt: skip
    with created.engine.begin() as conn:
        created.insert_alerts(conn, [(alert, T0)])
        created.record_status(conn, Status(node_id="n1", site="s1", seq=0, state="online"), T0)  # commands go to it
    return created


SERVER = "http://127.0.0.1:8080"  # the dashboard reached by the server's address


@pytest.fixture
def published() -> list[bytes]:
    return []


def client(store: Store, published: list[bytes], token: str | None = None) -> TestClient:
    def publish(topic: str, payload: bytes, qos: int) -> bool:
        published.append(payload)
        return True

    desk = CommandDesk(store, publish, "aggregator")
    return TestClient(build_api(store, EventBus(), IngestMetrics(), desk, operator_token=token), base_url=SERVER)


def test_command_history_needs_the_operator_token(store: Store, published: list[bytes]) -> None:
    api = client(store, published, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert api.post("/api/nodes/s1/n1/commands", json={"name": "ping"}, headers=auth).status_code == 202
    for path in ("/api/nodes/s1/n1/commands", "/api/nodes/s1/n1/commands/", "/api/nodes/s1/n1/commands?limit=5"):
        refused = api.get(path, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert api.head(path).status_code == 401
    assert len(api.get("/api/nodes/s1/n1/commands", headers=auth).json()["commands"]) == 1
    assert api.get("/api/alerts").status_code == 200  # the rest of reading stays open


def test_credentials_never_reach_command_history(store: Store, published: list[bytes]) -> None:
    api = client(store, published)
    issued = api.post("/api/nodes/s1/n1/commands", json={"name": "reload_config", "args": {"config": CONFIG}})
    assert issued.status_code == 202
    sent = decode(published[0])
    assert isinstance(sent, Command) and sent.args["config"] == CONFIG  # the node gets its password
    answer = CommandResult(
        node_id="n1", site="s1", seq=2, cmd_id=issued.json()["id"], name="reload_config", ok=False,
        detail=f"config refused: mqtt.password: Input should be a valid string (got '{PASSWORD}')",
        data={"token": "t0ken-value", "echo": f"password={PASSWORD}&x=1"},
    )  # fmt: skip
    with store.engine.begin() as conn:
        store.record_cmd_result(conn, answer, T0 + timedelta(seconds=1))

    (listed,) = api.get("/api/nodes/s1/n1/commands").json()["commands"]
    shown = str(listed)
    assert PASSWORD not in shown and PASSWORD.replace(" ", "-") not in shown and "t0ken-value" not in shown
    stored = yaml.safe_load(listed["args"]["config"])  # redacted as a config, still one
    assert stored["mqtt"] == {"url": "mqtts://***@broker:8883", "password": "***"} and stored["node_id"] == "n1"
    assert listed["result"]["detail"] == "config refused: mqtt.password: ***"
    assert listed["result"]["data"] == {"token": "***", "echo": "password=***"}


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("refused: password: abc;defg&hij", "refused: password: ***"),  # to the end of the line
        ("got password='it''s secret' here", "got password=*** here"),  # '' is a quote in YAML
        ('got password="a \\"b\\" c" here', "got password=*** here"),
        (
            "- x\n- mqtt:\n    password: |\n      abc\n      defg\n    user: bob",
            "- x\n- mqtt:\n    password: ***\n    user: bob",
        ),
        ("- a: 1\n- password: >-\n    abc\n\n    defg\n- b", "- a: 1\n- password: ***\n- b"),
    ],
)
def test_free_text_is_redacted_to_the_end_of_a_value(text: str, kept: str) -> None:
    assert redact(text) == kept


@pytest.mark.parametrize(
    "config",
    [
        "mqtt:\n  password: abc;defg&hij\n  username: bob\n",
        "mqtt:\n  password: 'it''s secret'\n  username: bob\n",
        "mqtt:\n  password: |\n    it's secret\n    on two lines\n  username: bob\n",
        '{"mqtt": {"password": "it\'s secret\\non two lines", "username": "bob"}}',
    ],
)
def test_a_config_is_redacted_as_the_mapping_it_parses_to(config: str) -> None:
    assert yaml.safe_load(redact(config)) == {"mqtt": {"password": "***", "username": "bob"}}
    assert "secret" not in redact(config) and "defg" not in redact(config)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a data: page
        {"Referer": "https://evil.example/form.html"},
        {"Origin": "http://testserver.evil.example"},
    ],
)
def test_without_a_token_a_cross_site_post_is_refused(store: Store, published: list[bytes], headers: dict) -> None:
    api = client(store, published)
    refused = api.post("/api/alerts/alert-0001/ack", json={"by": "eve"}, headers=headers)
    assert refused.status_code == 403 and "cross-site" in refused.json()["detail"]
    assert api.post("/api/nodes/s1/n1/commands", json={"name": "ping"}, headers=headers).status_code == 403
    assert store.alert("alert-0001")["acked_at"] is None and published == []  # type: ignore[index]


@pytest.mark.parametrize("name", ["dashboard.evil.example", "s4edge.city.example:8080"])
def test_without_a_token_a_post_through_a_host_name_is_refused(store: Store, published: list[bytes], name: str) -> None:
    """DNS rebinding: another site points its own name at this server; Host and Origin then agree."""
    api = client(store, published)
    rebound = {"Host": name, "Origin": f"http://{name}"}
    refused = api.post("/api/alerts/alert-0001/ack", json={"by": "eve"}, headers=rebound)
    assert refused.status_code == 403 and "--operator-token-file" in refused.json()["detail"]
    assert store.alert("alert-0001")["acked_at"] is None  # type: ignore[index]
    local = {"Host": "localhost:8080", "Origin": "http://localhost:8080"}
    assert api.post("/api/alerts/alert-0001/ack", json={"by": "alice"}, headers=local).status_code == 200
    with_token = client(store, published, TOKEN)
    named = {**rebound, "Authorization": f"Bearer {TOKEN}"}
    assert with_token.post("/api/nodes/s1/n1/commands", json={"name": "ping"}, headers=named).status_code == 202


@pytest.mark.parametrize(
    "headers", [{"Origin": SERVER}, {"Referer": f"{SERVER}/"}, {}]
)  # the dashboard's own fetch; a client that is no browser
def test_a_same_origin_post_still_acts(store: Store, published: list[bytes], headers: dict) -> None:
    api = client(store, published)
    assert api.post("/api/alerts/alert-0001/ack", json={"by": "alice"}, headers=headers).json()["acked_by"] == "alice"
