"""Broker URLs are read in one place (cloud_sync/broker_url.py): the four schemes map to host,
port, transport, TLS and WebSocket path; every other scheme is refused in one line, by the
node's config, the aggregator, provisioning and the demo alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.aggregator.broker import BrokerConfig, BrokerError
from s4edge.cloud_sync.broker_url import BrokerEndpoint, BrokerUrlError, broker_endpoint, mqtt_client
from s4edge.cloud_sync.fleet.provision import check_broker_url
from s4edge.cloud_sync.fleet.registry import FleetError
from s4edge.cloud_sync.uplink import UplinkSettings
from s4edge.edge.config import ConfigError, parse_config
from s4edge.shown import hide_userinfo

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
runner = CliRunner()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example", BrokerEndpoint("broker.example", 1883, "tcp", False, "")),
        ("mqtts://broker.example", BrokerEndpoint("broker.example", 8883, "tcp", True, "")),
        ("mqtt://10.0.0.2:1884/", BrokerEndpoint("10.0.0.2", 1884, "tcp", False, "")),
        ("ws://broker.example", BrokerEndpoint("broker.example", 80, "websockets", False, "/mqtt")),
        ("wss://broker.example", BrokerEndpoint("broker.example", 443, "websockets", True, "/mqtt")),
        ("ws://[::1]:9001/mqtt/ws?x=1", BrokerEndpoint("::1", 9001, "websockets", False, "/mqtt/ws?x=1")),
        ("MQTTS://a:b%40c@h:8884", BrokerEndpoint("h", 8884, "tcp", True, "", "a", "b@c")),
    ],
)
def test_each_scheme_maps_to_host_port_transport_tls_and_path(url: str, expected: BrokerEndpoint) -> None:
    assert broker_endpoint(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tcp://broker:1883", "for MQTT over TCP write mqtt://"),
        ("ssl://broker:8883", "for MQTT over TLS write mqtts://"),
        ("https://broker/mqtt", "write wss://"),
        ("amqp://broker", "amqp:// is not a broker scheme"),
        ("broker:1883", "not a URL"),
        ("mqtt://:1883", "names no host"),
        ("mqtt://broker:http", "the port is not a number"),
        ("mqtt://broker:70000", "the port is not a number"),
        ("mqtt://broker:1883/mqtt", "mqtt:// takes no path; for MQTT over WebSocket write ws://broker:PORT/mqtt"),
    ],
)
def test_anything_else_is_refused_in_one_line_with_an_example(url: str, says: str) -> None:
    with pytest.raises(BrokerUrlError) as refused:
        broker_endpoint(url)
    message = str(refused.value)
    assert says in message and "\n" not in message
    assert "mqtt://" in message or "ws://" in message


def test_a_password_in_the_url_never_reaches_the_message() -> None:
    with pytest.raises(BrokerUrlError) as refused:
        broker_endpoint("tcp://node:s3cr@t@broker:1883")
    assert "s3cr" not in str(refused.value) and "t@broker" not in str(refused.value)
    assert hide_userinfo("mqtts://u:p@h:8883") == "mqtts://***@h:8883"
    assert hide_userinfo("mqtts://h:8883") == "mqtts://h:8883"
    assert hide_userinfo("mqtts:u:p@h:8883") == "mqtts:***@h:8883"  # the '//' forgotten
    with pytest.raises(BrokerUrlError, match="percent-encode it as %2F") as refused:
        broker_endpoint("mqtts://node:20/s3cr3t@broker:8883")  # the '/' ended the authority
    assert "s3cr3t" not in str(refused.value)


@pytest.mark.parametrize("url", ["mqtt://broker:1883?password=s3cr3t", "mqtts://broker:8883/x?token=s3cr3t"])
def test_a_credential_in_a_refused_urls_query_never_reaches_the_message(url: str) -> None:
    # 'mqtt:// takes no path' quoted the whole URL, ?password= and all, to the technician's terminal
    with pytest.raises(BrokerUrlError) as refused:
        broker_endpoint(url)
    assert "s3cr3t" not in str(refused.value) and "takes no path" in str(refused.value)
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = url
    with pytest.raises(ConfigError) as config_refused:  # agent check, doctor and the agent's log quote this
        parse_config(data, origin="node.yaml")
    assert "s3cr3t" not in str(config_refused.value) and "mqtt.url" in str(config_refused.value)


@pytest.mark.parametrize(
    ("url", "encoded"),
    [
        # read as host n1, port 5551: 'agent check' said ok, and 'cannot reach n1:5551' was logged each second
        ("mqtt://n1:5551#Pw@127.0.0.1:1883", "%23"),
        ("mqtts://node-01:8883#Xy@broker.example:8883", "%23"),
        ("ws://user:12#34@broker.example:80", "%23"),  # host 'user', port 12, and a fragment of the rest
        ("mqtt://admin:s3cr/et@broker.example:1883", "%2F"),  # 'the port is not a number … mqtt://admin:1883'
        ("wss://admin:pa?ss@broker.example", "%3F"),
    ],
)
def test_a_password_holding_a_delimiter_is_refused_for_every_scheme(url: str, encoded: str) -> None:
    with pytest.raises(BrokerUrlError, match=f"percent-encode it as {encoded}") as refused:
        broker_endpoint(url)
    secret = url.partition("://")[2].rpartition("@")[0]
    assert secret not in str(refused.value) and "admin" not in str(refused.value)
    good = url.replace(secret, secret.replace("#", "%23").replace("/", "%2F").replace("?", "%3F"))
    assert broker_endpoint(good).password == secret.partition(":")[2]


@pytest.mark.parametrize(
    "url",
    [
        "wss://broker.example/mqtt?user=alice@example.com",
        "ws://broker.example:8080/tenants/@acme/mqtt",
        "wss://n1:secret@broker.example/mqtt?client=n1@site-a",
    ],
)
def test_a_websocket_path_or_query_may_hold_an_at_sign(url: str) -> None:
    assert broker_endpoint(url).host == "broker.example"


def test_the_paho_client_speaks_the_urls_transport() -> None:
    ws = mqtt_client(broker_endpoint("wss://h/custom"), client_id="t")
    assert ws.transport == "websockets" and ws._websocket_path == "/custom"
    assert mqtt_client(broker_endpoint("mqtt://h"), client_id="t").transport == "tcp"


def test_the_aggregator_refuses_tcp_and_ssl_schemes() -> None:
    for url in ("tcp://broker:1883", "ssl://broker:8883", "broker:1883"):
        with pytest.raises(BrokerError, match="use mqtt://, mqtts://, ws:// or wss://"):
            BrokerConfig(url)
    config = BrokerConfig("wss://agg:pw@broker.example/mqtt")
    assert (config.host, config.port, config.tls) == ("broker.example", 443, True)
    assert config.credentials() == ("agg", "pw") and config.shown_url == "wss://***@broker.example/mqtt"


@pytest.mark.parametrize("url", ["tcp://broker:1883", "ssl://broker:8883"])
def test_the_aggregator_cli_refuses_them_in_one_line_before_anything_starts(tmp_path: Path, url: str) -> None:
    db = tmp_path / "agg.db"
    result = runner.invoke(app, ["aggregator", "run", "--broker", url, "--db", f"sqlite:///{db}"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert "use mqtt://, mqtts://, ws:// or wss://, e.g. mqtts://broker.example:8883" in result.stderr
    assert not db.exists()


def test_the_node_config_refuses_tcp_naming_the_key(tmp_path: Path) -> None:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = "tcp://broker:1883"
    with pytest.raises(ConfigError) as refused:
        parse_config(data, origin="node.yaml")
    assert "mqtt.url" in str(refused.value) and "for MQTT over TCP write mqtt://" in str(refused.value)
    data["mqtt"]["url"] = "wss://broker.example:443/mqtt"
    assert parse_config(data).mqtt.url == "wss://broker.example:443/mqtt"


def test_the_uplink_reads_the_same_endpoint() -> None:
    endpoint = UplinkSettings(url="ws://broker:9001", client_id="n").endpoint
    assert (endpoint.host, endpoint.port, endpoint.transport, endpoint.path) == ("broker", 9001, "websockets", "/mqtt")
    with pytest.raises(ValueError, match="tcp://"):
        _ = UplinkSettings(url="tcp://broker:1883", client_id="n").endpoint


def test_provisioning_takes_only_tls_schemes() -> None:
    assert check_broker_url("wss://broker.example/mqtt") == "wss://broker.example/mqtt"
    with pytest.raises(FleetError, match="TLS only"):
        check_broker_url("ws://broker.example/mqtt")
    with pytest.raises(FleetError, match="for MQTT over TLS write mqtts://"):
        check_broker_url("ssl://broker.example:8883")


def test_the_demo_refuses_a_bad_broker_url_in_one_line() -> None:
    result = runner.invoke(app, ["demo", "--broker", "tcp://127.0.0.1:1883", "--duration", "1"])
    assert result.exit_code == 2 and "for MQTT over TCP write mqtt://" in result.stderr
    assert result.stderr.strip().count("\n") == 0
