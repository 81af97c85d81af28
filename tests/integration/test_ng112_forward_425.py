"""A PSAP that answers 425 Bad Alert Message (RFC 8876 §5.1) refused the content: the
forward fails at once, keeps the AlertMsg-Error for the operator, and is never resent."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from s4edge.cloud_sync.aggregator.store import make_engine, metadata
from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.records import get_forward
from s4edge.testing.sipp import SippPsap

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)"
)
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_a_425_is_a_permanent_failure_with_its_alertmsg_error(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    with SippPsap("psap_425.xml", "tcp", tmp_path, calls=1) as psap:
        config = Ng112Config.model_validate({"psap": psap.uri, "t1_s": 0.01, "max_attempts": 4, "backoff_s": 0})
        forwarder = Forwarder(engine, config, clock=lambda: T0)
        alert = Alert(
            node_id="n1",
            site="plaza",
            seq=1,
            kind="gas",
            severity="Severe",
            state="new",
            incident="inc-gas-0425",
            ts=T0,
            location=Location(lat=48.2, lon=16.37),
        )
        (forward,) = forwarder.submit(alert)
        assert forwarder.run_due() == 1
        assert psap.wait(10) == 0
        assert forwarder.run_due() == 0  # not due again: a 425 is not retried
    row = get_forward(engine, forward)
    assert (row["state"], row["code"], row["attempts"]) == ("failed", 425, 1)
    assert row["alertmsg_error"] == "101 Alert payload was not present or could not be found"
    assert len(psap.received()) == 1
