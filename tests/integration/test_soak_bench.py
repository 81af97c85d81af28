"""The soak benchmark runs end to end, short (the figures come from `s4edge bench soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4edge.bench.soak import RUN_MARK, fault_plan, run_soak, store_drained


def test_the_faults_are_spread_and_taken_in_turn() -> None:
    plan = fault_plan(70.0, {"broker": 3, "aggregator": 2, "node": 1})
    assert [at for at, _ in plan] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert [target for _, target in plan] == ["broker", "aggregator", "node", "broker", "aggregator", "broker"]


def test_the_store_has_drained_once_every_alert_created_by_then_is_stored() -> None:
    created = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 9.0}
    received = {"a": 4.0, "b": 3.0, "c": 7.0, "d": 9.5}
    assert store_drained(created, received, since=2.5, before=100.0) == 4.0  # a and b in, c not made yet
    assert store_drained(created, received, since=6.0, before=100.0) == 7.0
    assert store_drained(created, {"a": 4.0, "b": 3.0}, since=4.5, before=100.0) == 4.5
    assert store_drained(created, {"a": 4.0, "b": 3.0}, since=6.0, before=100.0) is None  # c never stored
    assert store_drained(created, received, since=6.0, before=6.5) is None  # not before the next fault


def _processes_of(run: Path) -> list[str]:
    """Processes whose command line or environment names the run's folder (RUN_MARK)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if f"{RUN_MARK}={run}".encode() in seen or str(run).encode() in seen:
            found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()!r}")
    return found


@pytest.mark.slow
def test_a_short_soak_with_a_broker_kill_stores_every_alert_once(tmp_path: Path) -> None:
    counts = {"broker": 1, "aggregator": 0, "node": 0}
    report = run_soak(duration=20.0, rate=5.0, counts=counts, downtime=2.0, drain_timeout=60.0, root=tmp_path)
    alerts = report["alerts"]
    assert alerts["created"] > 50
    assert (alerts["stored"], alerts["lost"], alerts["duplicated"]) == (alerts["created"], 0, 0), alerts
    assert report["drained"] and report["unexpected_exits"] == []
    assert [fault["target"] for fault in report["faults"]] == ["broker"]
    assert report["drain_after_last_fault_s"]["store"] is not None, "the backlog drained before the run ended"
    assert _processes_of(tmp_path) == [], "the soak left processes behind"
