"""Cross-sensor correlation and the NG112 config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.correlation import Correlator
from s4edge.cloud_sync.ng112.policy import CorrelationRule, Ng112ConfigError, load_config

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
_seq = count()


def alert(kind: str, at: float, zone: str = "hall", site: str = "metro", status: str = "Actual", **kw) -> Alert:
    n = next(_seq)
    return Alert(
        node_id=kw.pop("node_id", "n1"),
        site=site,
        seq=n,
        kind=kind,
        severity=kw.pop("severity", "Severe"),
        state=kw.pop("state", "new"),
        incident=f"inc-{kind}-{n:04d}",
        status=status,
        ts=T0 + timedelta(seconds=at),
        location=Location(lat=48.2, lon=16.4, zone=zone),
        **kw,
    )


GAS_FLAME = CorrelationRule(name="gas-flame", kinds=["gas", "flame"], within_s=120)
SMOKE_CROWD = CorrelationRule(
    name="smoke-crowd", kinds=["smoke", "crowd"], within_s=60, same_zone=True, severity="Severe"
)


def test_gas_then_flame_within_the_window_is_one_extreme_incident():
    correlator = Correlator([GAS_FLAME])
    assert correlator.observe(alert("gas", 0)) == []
    (escalated,) = correlator.observe(alert("flame", 90))
    assert escalated.kind == "escalation"
    assert escalated.severity == "Extreme"
    assert escalated.state == "new"
    assert escalated.incident.startswith("esc-gas-flame-")
    assert "gas inc-gas" in escalated.detail and "flame inc-flame" in escalated.detail
    # More of the same inside the window stays the same escalated incident.
    assert correlator.observe(alert("gas", 100)) == []
    assert correlator.observe(alert("flame", 150)) == []


def ended(part: Alert, at: float) -> Alert:
    return part.model_copy(update={"id": f"{part.id}-x", "state": "end", "ts": T0 + timedelta(seconds=at)})


def test_an_escalation_ends_once_every_incident_it_was_made_of_has_ended():
    # nothing ever ended it: its CAP Alert stayed in effect at the PSAP after both parts' Cancels
    correlator = Correlator([GAS_FLAME])
    gas, flame = alert("gas", 0), alert("flame", 90)
    correlator.observe(gas)
    (escalated,) = correlator.observe(flame)
    assert correlator.observe(ended(gas, 300)) == []
    (end,) = correlator.observe(ended(flame, 400))
    assert (end.kind, end.state, end.incident, end.id) == (
        "escalation",
        "end",
        escalated.incident,
        f"{escalated.id}-end",
    )
    assert end.ts == T0 + timedelta(seconds=400) and gas.incident in (end.detail or "")
    assert correlator.observe(ended(flame, 401)) == []  # once
    # the next co-occurrence is a new escalated incident, which ends in its turn
    correlator.observe(alert("gas", 500))
    (again,) = correlator.observe(alert("flame", 510))
    assert again.incident != escalated.incident


def test_an_escalation_of_an_incident_already_ended_ends_with_the_other():
    correlator = Correlator([GAS_FLAME])
    gas = alert("gas", 0)
    correlator.observe(gas)
    correlator.observe(ended(gas, 30))
    (escalated,) = correlator.observe(flame := alert("flame", 90))
    (end,) = correlator.observe(ended(flame, 200))
    assert end.incident == escalated.incident and end.state == "end"


def test_outside_the_window_nothing_escalates():
    correlator = Correlator([GAS_FLAME])
    correlator.observe(alert("gas", 0))
    assert correlator.observe(alert("flame", 121)) == []


def test_same_zone_rules_need_the_same_zone():
    correlator = Correlator([SMOKE_CROWD])
    correlator.observe(alert("smoke", 0, zone="platform-1"))
    assert correlator.observe(alert("crowd", 10, zone="platform-2")) == []
    (escalated,) = correlator.observe(alert("crowd", 20, zone="platform-1"))
    assert escalated.severity == "Severe"
    assert escalated.location.zone == "platform-1"


def test_a_drill_never_combines_with_a_real_alert():
    correlator = Correlator([GAS_FLAME])
    correlator.observe(alert("gas", 0, status="Exercise"))
    assert correlator.observe(alert("flame", 5)) == []
    (escalated,) = correlator.observe(alert("gas", 6))
    assert escalated.status == "Actual"


def test_sites_are_separate():
    correlator = Correlator([GAS_FLAME])
    correlator.observe(alert("gas", 0, site="metro"))
    assert correlator.observe(alert("flame", 5, site="mall")) == []


def test_config_loads_from_yaml(tmp_path):
    path = tmp_path / "ng112.yaml"
    path.write_text(
        "psap: sip:psap@127.0.0.1:5070;transport=tcp\n"
        "default: {kinds: [gas, flame], min_severity: Severe}\n"
        "sites:\n  school: {mode: confirm, confirm_timeout_s: 30, min_severity: Moderate}\n"
        "correlation:\n  - {name: gas-flame, kinds: [gas, flame], within_s: 120}\n"
    )
    config = load_config(path)
    assert config.policy_for("school").mode == "confirm"
    assert config.policy_for("plaza").mode == "auto"
    assert config.wants(alert("gas", 0, site="plaza"))[0]
    assert not config.wants(alert("gas", 0, site="plaza", severity="Moderate"))[0]
    assert config.wants(alert("gas", 0, site="school", severity="Moderate"))[0]
    assert not config.wants(alert("intrusion", 0, site="school", severity="Extreme"))[0]
    assert not config.wants(alert("intrusion", 0, site="plaza"))[0]
    assert config.correlation[0].name == "gas-flame"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("psap: sip:psap@h\nsurprise: 1\n", "surprise"),
        ("psap: not-a-uri\n", "psap"),
        ("psap: sip:psap@h\ndefault: {mode: sometimes}\n", "default.mode"),
        ("psap: sip:psap@h\ncorrelation: [{name: x, kinds: [gas]}]\n", "correlation.0.kinds"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(Ng112ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and where in str(caught.value)


def test_an_escalations_end_that_was_not_recorded_comes_again() -> None:
    # its entry was gone before the store took the end: taken again, the part's end found nothing,
    # and the PSAP never got the Cancel
    correlator = Correlator([GAS_FLAME])
    gas, flame = alert("gas", 0), alert("flame", 90)
    correlator.observe(gas)
    assert len(correlator.observe(flame)) == 1
    correlator.observe(ended(gas, 300))
    (end,) = correlator.observe(last := ended(flame, 400))
    correlator.forget([end])  # the store refused the batch
    correlator.observe(ended(gas, 300))
    (again,) = correlator.observe(last)
    assert (again.id, again.state) == (end.id, "end")


def test_an_escalation_whose_parts_never_all_end_is_forgotten_after_a_day() -> None:
    correlator = Correlator([GAS_FLAME])
    correlator.observe(alert("gas", 0))
    correlator.observe(alert("flame", 90))  # its end goes to another replica
    correlator.observe(ended(alert("smoke", 10), 2 * 86400))
    assert correlator._escalations == {}
