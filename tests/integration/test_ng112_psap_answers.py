"""How the forwarder takes a PSAP's answers that are neither 200 nor 503: sipp as the PSAP
answers a busy 486 with Retry-After (RFC 3261 §21.4.24, §20.33) and a 415 with the Accept
that says what it takes (§21.4.13)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest

from s4edge.cloud_sync.aggregator.store import make_engine, metadata
from s4edge.cloud_sync.messages import Alert, Location, Measurement
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.records import get_forward
from s4edge.testing.sipp import SippPsap

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)"
)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

ANSWER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="ng112 PSAP answering STATUS">
  <recv request="MESSAGE" crlf="true"></recv>
  <send><![CDATA[
      SIP/2.0 STATUS
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]psap[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      HEADER
      Content-Length: 0

    ]]></send>
</scenario>
"""


def fire() -> Alert:
    return Alert(
        node_id="n7",
        site="station",
        seq=3,
        kind="flame",
        severity="Extreme",
        state="new",
        incident="inc-flame-0007",
        ts=T0,
        location=Location(lat=52.520008, lon=13.404954, zone="hall"),
        measurements=[Measurement(quantity="ir_flicker", value=9.5, unit="Hz")],
    )


@pytest.fixture
def forwarding(tmp_path):
    """``forwarding(status, header)``: a forwarder calling a sipp PSAP that answers so, and its clock."""
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    clock = [T0]
    psaps: list[SippPsap] = []

    def start(status: str, header: str) -> tuple[Forwarder, SippPsap, list[datetime]]:
        scenario = tmp_path / f"psap-{len(psaps)}.xml"
        scenario.write_text(ANSWER.replace("STATUS", status).replace("HEADER", header))
        psap = SippPsap(str(scenario), "tcp", tmp_path / f"sipp-{len(psaps)}").start()
        psaps.append(psap)
        config = Ng112Config(psap=psap.uri, t1_s=0.01, backoff_s=2, max_attempts=3)
        return Forwarder(engine, config, clock=lambda: clock[0]), psap, clock

    yield start
    for psap in psaps:
        psap.stop()


@pytest.mark.parametrize("status", ["486 Busy Here", "600 Busy Everywhere"])
def test_a_busy_psap_is_called_again_after_its_retry_after(forwarding, status):
    # RFC 3261 §21.4.24 / §21.6.1: the PSAP is busy, and says when to call again (§20.33);
    # the forward ended failed at once, and the emergency call was never made again
    fwd, psap, clock = forwarding(status, "Retry-After: 120")
    (forward,) = fwd.submit(fire())
    assert fwd.run_due() == 1
    row = get_forward(fwd.engine, forward)
    assert (row["state"], row["code"], row["reason"]) == ("retrying", int(status[:3]), f"{status}, Retry-After 120 s")
    clock[0] += timedelta(seconds=119)  # the backoff alone would have called at +2 s
    assert fwd.run_due() == 0
    clock[0] += timedelta(seconds=1)
    assert fwd.run_due() == 1
    assert len(psap.received()) == 2


def test_a_decline_without_a_retry_after_is_final(forwarding):
    fwd, _, _ = forwarding("603 Decline", "Server: psap")
    (forward,) = fwd.submit(fire())
    assert fwd.run_due() == 1
    assert get_forward(fwd.engine, forward)["state"] == "failed"


def test_a_415_names_the_media_types_the_psap_takes(forwarding):
    # RFC 3261 §21.4.13: a 415 lists what the server accepts; the operator saw only
    # "415 Unsupported Media Type" and could not tell the PSAP's integrator what it wants
    fwd, _, _ = forwarding("415 Unsupported Media Type", "Accept: application/cap+xml, application/pidf+xml")
    (forward,) = fwd.submit(fire())
    assert fwd.run_due() == 1
    row = get_forward(fwd.engine, forward)
    assert (row["state"], row["code"]) == ("failed", 415)  # the same content would be refused again
    assert row["reason"] == "415 Unsupported Media Type; the PSAP accepts application/cap+xml, application/pidf+xml"
