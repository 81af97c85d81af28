"""With an operator token, the dashboard asks for it once when the API answers 401, keeps
it for the tab, and the NG112 panel's confirm then goes through (headless Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_dashboard_browser import browser as browser  # the same headless Chromium
from test_dashboard_browser import pytestmark as pytestmark  # and the same skip

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.receiver import PsapReceiver
from s4edge.cloud_sync.ng112.service import attach
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

TOKEN = "operator-tok-7f3a"


@pytest.fixture
def psap() -> Iterator[PsapReceiver]:
    receiver = PsapReceiver("tcp:127.0.0.1:0", lambda call: None).start()
    yield receiver
    receiver.stop()


@pytest.mark.slow
def test_the_panel_asks_for_the_token_once_and_confirms(
    broker: Mosquitto,
    psap: PsapReceiver,
    browser: Any,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-tok", operator_token=TOKEN
    )
    host, port = psap.address
    aggregator = Aggregator(config)
    forwarder = attach(
        aggregator, Ng112Config(psap=f"sip:psap@{host}:{port};transport=tcp", t1_s=0.05, default={"mode": "confirm"})
    )
    with aggregator:
        try:
            gas = Alert(
                node_id="n1", site="plaza", seq=1, kind="gas", severity="Severe", state="new",
                incident="inc-gas-tok1", location=Location(lat=48.2, lon=16.37),
            )  # fmt: skip
            (forward_id,) = forwarder.submit(gas)
            assert httpx.post(f"{aggregator.url}/ng112/forwards/{forward_id}/confirm").status_code == 401

            summary = httpx.get(f"{aggregator.url}/ng112/summary").json()
            assert (summary["awaiting_confirm"], summary["in_flight"], summary["delivered"]) == (1, 0, 0)
            assert summary["live"][0]["headline"] == "Flammable gas at plaza/n1"  # no title: one from its kind

            browser.get(aggregator.url + "/")
            confirm = f'#ng112 tr[data-forward="{forward_id}"] button.confirm'
            button = wait_until(
                lambda: browser.find_elements(By.CSS_SELECTOR, confirm),
                what="the confirm button at the top of the page",
            )[0]
            assert button.text == "confirm call"
            assert "1 awaiting confirmation" in browser.find_element(By.CSS_SELECTOR, "#ng112 .counters").text
            button.click()
            wait_until(
                lambda: browser.find_element(By.ID, "token-dialog").get_attribute("open") is not None,
                what="the token dialog",
            )
            browser.find_element(By.ID, "token-input").send_keys(TOKEN)
            browser.find_element(By.ID, "token-ok").click()
            done = forwarder.wait_for(("delivered", "failed"), 10, forward_id=forward_id)
            assert done is not None and (done["state"], done["decided_by"]) == ("delivered", "operator")
            kept = browser.execute_script("return sessionStorage.getItem('s4edge-operator-token')")
            assert kept == TOKEN
        finally:
            forwarder.stop()
