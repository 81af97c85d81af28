"""End to end: a node's alert over a real mosquitto → aggregator commit → NG112 forward →
sipp PSAP answers 200 OK; the PSAP follows the CAP resource link for the readings."""

from __future__ import annotations

import shutil

import httpx
import pytest
from lxml import etree

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import Alert, Location, Measurement, encode, topic_for
from s4edge.cloud_sync.ng112.cap import CAP_NS
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.service import attach
from s4edge.testing import free_port
from s4edge.testing.sipp import SippPsap

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)"
)


def test_a_stored_alert_is_forwarded_and_its_readings_can_be_fetched(broker, node, tmp_path):
    port = free_port()
    aggregator = Aggregator(
        AggregatorConfig(
            broker=BrokerConfig(f"mqtt://{broker.host}:{broker.port}"),
            db_url=f"sqlite:///{tmp_path / 'agg.db'}",
            http_port=port,
            client_id="agg-ng112-test",
        )
    )
    with SippPsap("psap_200.xml", "tcp", tmp_path, calls=1) as psap:
        config = Ng112Config(psap=psap.uri, t1_s=0.05, readings_base_url=f"http://127.0.0.1:{port}")
        forwarder = attach(aggregator, config)
        aggregator.start()
        try:
            gas = Alert(
                node_id="n9",
                site="plaza",
                seq=1,
                kind="gas",
                severity="Extreme",
                state="new",
                incident="inc-gas-0909",
                location=Location(lat=48.2, lon=16.37, zone="gate"),
                measurements=[Measurement(quantity="ch4", value=31.0, unit="%LEL")],
            )
            node.publish(topic_for(gas), encode(gas), qos=1).wait_for_publish(5)
            row = forwarder.wait_for(("delivered", "failed"), 15, alert_id=gas.id)
            assert row is not None and row["state"] == "delivered", row
            listed = httpx.get(f"{aggregator.url}/ng112/forwards").json()["forwards"]
            assert [(f["alert_id"], f["code"], f["msg_type"]) for f in listed] == [(gas.id, 200, "Alert")]
            assert psap.wait(10) == 0
            (raw,) = psap.received()
            cap_start = raw.index(b"<?xml")
            cap = etree.fromstring(raw[cap_start : raw.index(b"</alert>") + len(b"</alert>")])
            link = cap.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}resource/{{{CAP_NS}}}uri")
            answer = httpx.get(link)
            assert answer.status_code == 200
            assert answer.json()["readings"][0] == {
                "ts": answer.json()["readings"][0]["ts"],
                "source": "alert:gas",
                "incident": "inc-gas-0909",
                "quantity": "ch4",
                "value": 31.0,
                "unit": "%LEL",
            }
            assert httpx.get(link.replace("sig=", "sig=0")).status_code == 404  # a signature not ours
        finally:
            forwarder.stop()
            aggregator.stop()
