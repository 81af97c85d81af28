"""A CO pre-alarm stays local: no site policy forwards it, whatever its min_severity, and
it joins no correlation; the alarm at the standard's alarm point opens the call
(EN 50291-1 alarm-time table: no alarm at 50 ppm before 60 min)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from s4edge.cloud_sync.aggregator.store import make_engine, metadata
from s4edge.cloud_sync.messages import Alert, Location, Measurement
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config, is_pre_alarm
from s4edge.cloud_sync.ng112.receiver import PsapReceiver
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.sensing.co import PROFILES, COAlarm

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
_seq = count()


def as_alert(draft: AlertDraft, site: str = "school-north") -> Alert:
    """The draft as the node publishes it (edge/app.py publish_alert)."""
    n = next(_seq)
    return Alert(
        node_id="n1", site=site, seq=n, ts=T0 + timedelta(seconds=n), kind=draft.kind, severity=draft.severity,
        state=draft.state, incident=draft.incident, location=Location(lat=48.2, lon=16.37, zone="boiler-room"),
        title=draft.title, detail=draft.detail, measurements=list(draft.measurements),
    )  # fmt: skip


def co_at_50_ppm() -> list[AlertDraft]:
    """What an EN 50291 CO sensor sends over 90 min at 50 ppm: a pre-alarm at 43 min, then the alarm."""
    drafts: list[AlertDraft] = []
    alarm = COAlarm("co:boiler", PROFILES["en50291"], IncidentBook(drafts.append, stale_after_s=None), "mq7")
    for t in range(0, 90 * 60 + 1, 10):
        alarm.observe(50.0, float(t))
    return drafts


def config(min_severity: str, **more: object) -> Ng112Config:
    site = {"kinds": ["gas", "co", "smoke", "flame", "escalation"], "min_severity": min_severity}
    return Ng112Config.model_validate({"psap": "sip:psap@192.0.2.1:5060", "sites": {"school-north": site}, **more})


@pytest.mark.parametrize("min_severity", ["Minor", "Moderate"])
def test_a_pre_alarm_is_not_forwarded_whatever_the_sites_min_severity(min_severity: str) -> None:
    drafts = co_at_50_ppm()
    pre, alarm = drafts[0], next(d for d in drafts if d.severity == "Severe")
    assert pre.state == "new" and alarm.state == "update" and pre.incident == alarm.incident
    wanted, why = config(min_severity).wants(as_alert(pre))
    assert not wanted and "pre-alarm" in why
    assert config(min_severity).wants(as_alert(alarm)) == (True, "co/Severe is forwarded (auto)")


def test_a_pre_alarm_from_a_node_before_the_mark_is_recognised_by_its_title() -> None:
    old = Alert(
        node_id="n1", site="school-north", seq=1, kind="co", severity="Moderate", state="new", incident="inc-old-co-1",
        location=Location(lat=48.2, lon=16.37), title="CO pre-alarm: 50 ppm",
        measurements=[Measurement(quantity="co", value=50.0, unit="ppm")],
    )  # fmt: skip
    assert is_pre_alarm(old) and not config("Moderate").wants(old)[0]


@pytest.fixture
def psap():
    calls: list = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    receiver.calls = calls  # type: ignore[attr-defined]
    yield receiver
    receiver.stop()


def test_the_forwarder_calls_the_psap_at_the_alarm_not_the_pre_alarm(tmp_path, psap) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    host, port = psap.address
    settings = config("Minor").model_copy(update={"psap": f"sip:psap@{host}:{port};transport=tcp", "t1_s": 0.01})
    forwarder = Forwarder(engine, settings, clock=lambda: T0)
    drafts = co_at_50_ppm()
    pre, alarm = drafts[0], next(d for d in drafts if d.severity == "Severe")
    assert forwarder.submit(as_alert(pre)) == []
    assert len(forwarder.submit(as_alert(alarm))) == 1
    assert forwarder.run_due() == 1
    assert [(c.cap.get("event"), c.cap.get("severity")) for c in psap.calls] == [("co", "Severe")], psap.calls


def test_a_pre_alarm_joins_no_correlation() -> None:
    from s4edge.cloud_sync.ng112.correlation import Correlator

    rules = config("Severe", correlation=[{"name": "co-smoke", "kinds": ["co", "smoke"], "within_s": 120}]).correlation
    correlator = Correlator(rules)
    pre = as_alert(co_at_50_ppm()[0])
    smoke = as_alert(AlertDraft(kind="smoke", severity="Severe", state="new", incident="inc-smoke-01"))
    assert correlator.observe(pre) == [] and correlator.observe(smoke) == []
