"""URLs in messages, logs, alerts and health: never a user, a password or a query credential."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cloud_sync.aggregator.store_url import shown
from s4edge.cloud_sync.ng112.sip import SipError, parse_target, shown_uri
from s4edge.drivers.frames import FrameSourceError, open_source
from s4edge.shown import shown_url


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("rtsp://admin:CAMSECRET@10.0.0.7:554/Streaming/101", "rtsp://***@10.0.0.7:554/Streaming/101"),
        ("rtsp://10.0.0.7/cam/realmonitor?channel=1&user=admin&password=SECRET", None),
        ("rtsp://10.0.0.7/live?user=admin&pwd=SECRET&subtype=0", "rtsp://10.0.0.7/live?user=admin&pwd=***&subtype=0"),
        ("wss://broker.example/mq?token=SECRET", "wss://broker.example/mq?token=***"),
        ("postgresql://127.0.0.1:5999/x?pass%77ord=SECRET", "postgresql://127.0.0.1:5999/x?pass%77ord=***"),
        ("mqtts://broker.example:8883", "mqtts://broker.example:8883"),
        ("rtsp://10.0.0.5/cam;user=admin;password=SECRET", "rtsp://10.0.0.5/cam;user=admin;password=***"),
        ("http://10.0.0.5/video.cgi?loginuse=admin&loginpas=SECRET", None),
        ("http://cam/x#token=SECRET", "http://cam/x#token=***"),
        ("wss://b/mqtt?X-Amz-Signature=SECRET&jwt=SECRET", "wss://b/mqtt?X-Amz-Signature=***&jwt=***"),
    ],
)
def test_a_url_is_shown_without_its_credentials(url: str, want: str | None) -> None:
    got = shown_url(url)
    assert "SECRET" not in got
    if want is not None:
        assert got == want


def test_a_store_url_with_a_percent_encoded_password_key_is_not_shown_whole() -> None:
    assert "TOPSECRET" not in shown("postgresql://127.0.0.1:5999/x?pass%77ord=TOPSECRET1")


def test_a_camera_that_cannot_be_opened_names_its_url_without_the_password() -> None:
    """The name goes into the camera_fault alert, health and the node's log: an IP camera's
    rtsp://user:pass@ went out over MQTT and was served by the open HTTP API."""
    source = open_source("rtsp://admin:CAMSECRET42@127.0.0.1:1/stream")
    assert source.name == "rtsp://***@127.0.0.1:1/stream"
    with pytest.raises(FrameSourceError) as caught:
        source.open()
    assert "CAMSECRET42" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_a_gstreamer_camera_names_its_pipeline_without_credentials() -> None:
    """Its name was the pipeline's first 40 characters, password and all, cut before the '@'
    when the user name was long: no userinfo left to find once cut."""
    for pipeline in (
        "rtspsrc location=rtsp://operator:SECRETSECRET@10.0.0.5/Streaming ! decodebin ! appsink",
        "rtspsrc location=rtsp://10.0.0.5/s user-id=admin user-pw=SECRET ! decodebin ! appsink",
    ):
        name = open_source(f"gst:{pipeline}").name
        assert "SECRET" not in name and name.startswith("gst:rtspsrc location=rtsp://")


@pytest.mark.parametrize(
    "uri",
    [
        "sip:psap:SECRET@192.0.2.10:5060",
        "SIP:psap:SECRET@192.0.2.10:5060",
        "sip:psap:SEC@RET@192.0.2.10",
        "sip:psap:SEC;RET@192.0.2.10",
    ],
)
def test_a_sip_uri_is_shown_without_its_password(uri: str) -> None:
    assert shown_uri(uri).endswith("***@192.0.2.10:5060") or shown_uri(uri).endswith("***@192.0.2.10")
    assert "SEC" not in shown_uri(uri)


def test_an_upper_case_sip_scheme_is_a_sip_uri() -> None:
    assert parse_target("SIP:psap@192.0.2.10:5070;transport=TCP").port == 5070
    assert parse_target("SIPS:psap@192.0.2.10").transport == "tls"
    with pytest.raises(SipError, match=r"\*\*\*"):
        parse_target("sip:psap:SECRET@@bad host")


def test_ng112_check_config_does_not_print_the_psap_password(tmp_path: Path) -> None:
    from s4edge.cli import app

    config = tmp_path / "ng112.yaml"
    config.write_text("psap: 'sip:esrp:SECRETa@192.0.2.10:5060;transport=tcp'\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ng112", "check-config", str(config)])
    assert result.exit_code == 0, result.output
    assert "SECRETa" not in result.output and "sip:esrp:***@192.0.2.10:5060" in result.output
