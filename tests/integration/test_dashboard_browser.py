"""The dashboard in a headless Chromium: a node and a live alert appear, and ack works."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import Alert, Heartbeat, Location, Status, encode, topic_for
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
        reason="needs chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
    ),
]




def text_of(browser: Any, selector: str) -> str:
    """The element's text, or '' while it is absent or being re-rendered."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, selector))
    except StaleElementReferenceException:
        return ""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def aggregator(broker: Mosquitto, tmp_path: Path) -> Iterator[Aggregator]:
    config = AggregatorConfig(BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-ui")
    with Aggregator(config) as running:
        yield running


@pytest.mark.slow
def test_dashboard_shows_nodes_and_live_alerts_and_acknowledges(
    aggregator: Aggregator, broker: Mosquitto, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(aggregator.url + "/")
    wait_until(lambda: "live" in browser.find_element(By.ID, "link").text, what="the live stream")

    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-ui", protocol=mqtt.MQTTv5)
    node.connect(broker.host, broker.port)
    node.loop_start()
    try:
        for message in (
            Status(node_id="cam-7", site="plaza", seq=0, state="online"),
            Heartbeat(node_id="cam-7", site="plaza", seq=1, uptime_s=42),
            Alert(
                id="alert-ui-000001", node_id="cam-7", site="plaza", seq=2, kind="crowd", severity="Extreme",
                state="new", incident="inc-ui-0001", location=Location(lat=1, lon=2, zone="fountain"),
                title="crowd crush risk",
            ),
        ):  # fmt: skip
            node.publish(topic_for(message), encode(message), qos=1).wait_for_publish(5)
    finally:
        node.disconnect()
        node.loop_stop()

    row = wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-alert="alert-ui-000001"]'), what="the alert row"
    )[0]
    assert "crowd crush risk" in row.text and "Extreme" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".sev").get_attribute("class") == "sev sev-Extreme"
    wait_until(lambda: "online" in text_of(browser, 'tr[data-node="plaza/cam-7"]'), what="the node online")

    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    wait_until(lambda: "acked by operator" in row.text, what="the ack shown")
    assert "acked" in row.get_attribute("class")
    stored = httpx.get(f"{aggregator.url}/api/alerts/alert-ui-000001").json()
    assert stored["acked_by"] == "operator" and stored["acked_at"]
