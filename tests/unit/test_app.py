"""The node's composition root without a broker: what it stores, and how it answers commands."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from s4edge.cloud_sync.messages import Command, Measurement, decode
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import ConfigError, parse_config
from s4edge.edge.health import Health, soc_temp_c
from s4edge.testing import free_port

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_PORTS: dict[Path, int] = {}


def sim_config(tmp_path: Path, **changes) -> dict:
    data = yaml.safe_load(SIM.read_text())
    # the concourse source alone: these tests count and rename sources (the plant-room CO
    # source is tested in tests/unit/test_sim_node_co.py)
    data["sources"] = data["sources"][:1]
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    # nothing listens there: unit tests reach no broker
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{_PORTS.setdefault(tmp_path, free_port())}"
    data.update(changes)
    return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def node(tmp_path: Path, clock: Clock):
    running = Node(parse_config(sim_config(tmp_path)), base_dir=tmp_path, clock=clock)
    yield running
    running.close(flush_s=0)


def stored(node: Node, suffix: str) -> list:
    return [decode(r.payload) for r in node.outbox.pending(limit=1000) if r.topic.endswith("/" + suffix)]


def command(name: str, *, issuer: str = "aggregator", expires_in: float = 60, **args) -> Command:
    return Command(
        node_id="sim-node-1",
        site="demo-city",
        seq=1,
        name=name,
        issuer=issuer,
        expires=datetime.now(UTC) + timedelta(seconds=expires_in),
        args=args,
    )


def test_alert_is_stored_with_identity_seq_and_zone_override(node: Node) -> None:
    first = node.publish_alert(AlertDraft(kind="gas", severity="Moderate", state="new", incident="inc-00001"))
    second = node.publish_alert(
        AlertDraft(kind="gas", severity="Severe", state="update", incident="inc-00001", zone="platform-2")
    )
    alerts = stored(node, "alert")
    assert [a.id for a in alerts] == [first.id, second.id]
    assert alerts[0].seq < alerts[1].seq
    assert alerts[0].location.zone == "concourse-a" and alerts[1].location.zone == "platform-2"
    assert alerts[0].location.lat == pytest.approx(48.1374)
    assert {a.status for a in alerts} == {"Exercise"}
    assert node.outbox.pending()[0].qos == 1


def test_an_alert_the_wire_contract_refuses_does_not_crash_the_source(node: Node) -> None:
    node.book.raise_("k", "gas", "Minor", 0.0)
    bad = AlertDraft(kind="gas", severity="Minor", state="new", incident="inc-00002", title="A" * 300)
    node._emit(bad)
    assert len(stored(node, "alert")) == 1
    assert node.health.states()["alerts"].startswith("fault")


def test_telemetry_is_rate_limited_per_source(node: Node, clock: Clock) -> None:
    reading = [Measurement(quantity="methane", value=3.0, unit="%LEL")]
    for _ in range(5):
        node._telemetry("concourse", reading)
        clock.now += 1
    node._telemetry("other", reading)
    clock.now += 10
    node._telemetry("concourse", reading)
    telemetry = stored(node, "telemetry")
    assert len(telemetry) == 3
    assert telemetry[0].readings[0].value == 3.0


def test_a_poll_of_more_than_64_readings_is_sent_whole_in_several_messages(node: Node) -> None:
    readings = [Measurement(quantity=f"q{i}", value=float(i), unit="1") for i in range(150)]
    node._telemetry("rig", readings)
    sent = [r for message in stored(node, "telemetry") for r in message.readings]
    assert [r.value for r in sent] == [float(i) for i in range(150)]


def test_heartbeat_reports_outbox_and_sensor_states(node: Node, clock: Clock) -> None:
    node.publish_alert(AlertDraft(kind="gas", severity="Minor", state="new", incident="inc-00003"))
    node.health.set("mq4", "ok")
    clock.now += 42
    beat = node.heartbeat()
    assert beat.uptime_s == pytest.approx(42)
    assert beat.outbox_depth == 1 and beat.telemetry_dropped == 0
    assert beat.sensors == {"mq4": "ok"}
    assert beat.mem_mb and beat.mem_mb > 0


def test_soc_temperature_reads_the_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert soc_temp_c(zone) == pytest.approx(48.312)
    assert soc_temp_c(tmp_path / "absent") is None


def test_health_reports_degraded_sensors() -> None:
    health = Health()
    health.set("mq4", "ok")
    health.set("cam0", "fault: no frames for 5 s")
    assert health.degraded() == ["cam0"]


def test_ping_is_answered_on_cmd_result(node: Node) -> None:
    cmd = command("ping")
    result = node.execute(cmd)
    assert result.ok and result.cmd_id == cmd.id
    (answer,) = stored(node, "cmd_result")
    assert answer.cmd_id == cmd.id and answer.ok and answer.detail == "pong"


def test_replayed_expired_and_foreign_commands_are_refused(node: Node) -> None:
    cmd = command("ping")
    assert node.execute(cmd).ok
    replay = node.execute(cmd)
    assert not replay.ok and "replay" in (replay.detail or "")
    expired = node.execute(command("ping", expires_in=-1))
    assert not expired.ok and "expired" in (expired.detail or "")
    foreign = node.execute(command("ping", issuer="mallory"))
    assert not foreign.ok and "mallory" in (foreign.detail or "")


def test_rebirth_answers_with_the_config_digest(node: Node) -> None:
    result = node.execute(command("rebirth"))
    assert result.ok and result.data == {"config_digest": node.digest}


def test_swap_model_without_vision_source_is_refused(node: Node) -> None:
    result = node.execute(command("swap_model", model="fastestdet"))
    assert not result.ok and result.detail == "no vision source"


def test_bad_reload_is_refused_and_the_old_config_keeps_running(node: Node, tmp_path: Path) -> None:
    node.start()
    before = node.digest
    bad = sim_config(tmp_path)
    bad["sources"][0]["sensors"][0]["levels"] = [{"on_at": "lots", "severity": "Moderate"}]
    result = node.execute(command("reload_config", config=yaml.safe_dump(bad)))
    assert not result.ok
    assert "sources.0" in (result.detail or "") and "levels.0.on_at" in (result.detail or "")
    assert node.digest == before and len(node._running) == 1


def test_identity_cannot_change_at_runtime(node: Node, tmp_path: Path) -> None:
    result = node.execute(command("reload_config", config=yaml.safe_dump(sim_config(tmp_path, node_id="other"))))
    assert not result.ok and "node_id" in (result.detail or "")


def test_good_reload_restarts_the_sources(node: Node, tmp_path: Path) -> None:
    node.start()
    old_threads = [r.thread for r in node._running]
    new = sim_config(tmp_path)
    new["sources"][0]["name"] = "platform"
    result = node.execute(command("reload_config", config=yaml.safe_dump(new)))
    assert result.ok, result.detail
    assert [r.source.name for r in node._running] == ["platform"]
    assert not any(t.is_alive() for t in old_threads)
    assert result.data["config_digest"] == node.digest


def test_inbound_garbage_is_counted_not_queued(node: Node) -> None:
    node._on_command("s4edge/v1/demo-city/sim-node-1/cmd/ping", b"\xff not json")
    node._on_command("s4edge/v1/demo-city/sim-node-1/cmd/ping", json.dumps({"schema": "s4edge/1"}).encode())
    assert node.rejected == {"bad_json": 1, "invalid": 1}
    assert node._commands.empty()


def test_the_published_config_digest_does_not_depend_on_the_password(tmp_path: Path, clock: Clock) -> None:
    digests = []
    for password in ("hunter2", "correct horse battery staple"):
        data = sim_config(tmp_path)
        data["mqtt"]["password"] = password
        other = Node(parse_config(data), base_dir=tmp_path, clock=clock)
        digests.append(other.digest)
        other.close(flush_s=0)
    assert digests[0] == digests[1]


def test_a_reload_whose_source_cannot_be_built_is_refused_and_answered(node: Node, tmp_path: Path) -> None:
    new = sim_config(tmp_path)
    # a vision source whose model is not in the catalogue: building it raises, not validating
    new["sources"].append(
        {
            "type": "vision",
            "name": "cam9",
            "camera": {"url": "replay:nonexistent.avi"},
            "model": {"name": "no-such-model"},
        }
    )
    result = node.execute(command("reload_config", config=yaml.safe_dump(new)))
    assert result.ok is False and "cam9" in (result.detail or "")
    assert [s.name for s in node.config.sources] == ["concourse"], "the old config keeps running"


def test_a_removed_sources_states_do_not_keep_the_node_degraded() -> None:
    health = Health()
    view = health.of_source("cam0")
    view.set("cam0", "fault: camera stopped delivering frames")
    assert health.degraded() == ["cam0"]
    health.forget("cam0")
    assert health.degraded() == []


def test_stopped_sources_release_their_devices(node: Node) -> None:
    node.start()
    released: list[str] = []
    (running,) = node._running
    running.source.close = lambda: released.append(running.source.name)  # type: ignore[attr-defined]
    node._stop_sources()
    assert released == ["concourse"]


def test_a_config_whose_second_source_fails_releases_the_first(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sources built before the one that fails let go of their devices: a GPIO line held
    by a half-built config would refuse the next reload, and the old config's return."""
    import s4edge.edge.app as app

    released: list[str] = []

    class Held:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            released.append(self.name)

    def build(source_config, book):  # the second source's GPIO line is busy
        if source_config.name == "second":
            raise RuntimeError("GPIO17 is in use")
        return Held(source_config.name)

    monkeypatch.setattr(app, "build_source", build)
    config = sim_config(tmp_path)
    config["sources"] = [dict(config["sources"][0], name=name) for name in ("first", "second", "third")]
    with pytest.raises(ConfigError, match="'second': GPIO17 is in use"):
        node._build_sources(parse_config(config).sources, node.book)  # type: ignore[attr-defined]
    assert released == ["first"]


def test_a_reload_that_needs_the_devices_the_old_sources_hold_gets_them(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.start()
    real_build = node._build_sources

    def build_once_freed(config, book):  # a GPIO line: busy while the running source holds it
        if node._running:
            raise ConfigError("sources: sensors source 'rig': GPIO17 is in use")
        return real_build(config, book)

    monkeypatch.setattr(node, "_build_sources", build_once_freed)
    new = sim_config(tmp_path)
    new["sources"][0]["name"] = "concourse-b"
    assert node.execute(command("reload_config", config=yaml.safe_dump(new))).ok
    assert [r.source.name for r in node._running] == ["concourse-b"]


def test_a_reload_that_fails_even_with_the_devices_free_restores_the_old_sources(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.start()
    real_build = node._build_sources

    def only_the_old_config(configs, book):
        if any(c.name != "concourse" for c in configs):
            raise ConfigError("sources: sensors source 'rig': no such I2C bus /dev/i2c-9")
        return real_build(configs, book)

    monkeypatch.setattr(node, "_build_sources", only_the_old_config)
    new = sim_config(tmp_path)
    new["sources"][0]["name"] = "concourse-b"
    result = node.execute(command("reload_config", config=yaml.safe_dump(new)))
    assert not result.ok and "i2c-9" in (result.detail or "")
    assert [r.source.name for r in node._running] == ["concourse"], "the old sources run again"


def test_a_reload_on_a_full_disk_still_runs_the_new_sources(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a lifecycle change ends the open incidents into the outbox; on a full disk that raised
    # after the old sources had stopped, and the node went on with no source at all
    node.start()
    node.book.raise_("gas:test", "gas", "Severe", node.clock())

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    new = sim_config(tmp_path)
    new["alerts"]["update_interval_s"] = 7
    new["sources"][0]["name"] = "concourse-b"
    with monkeypatch.context() as disk:
        disk.setattr(node.outbox, "put_next", full)
        node.reload(yaml.safe_dump(new))
    assert [(r.source.name, r.thread.is_alive()) for r in node._running] == [("concourse-b", True)]
    assert node.config.alerts.update_interval_s == 7 and node.book.open_keys() == []


def test_a_reload_whose_device_fails_to_open_restores_the_old_sources_and_answers(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.start()
    real_build = node._build_sources
    tries = []

    def busy_then_broken(configs, book):
        if all(c.name == "concourse" for c in configs):
            return real_build(configs, book)
        tries.append(configs)
        if len(tries) == 1:
            raise ConfigError("sources: the GPIO line is busy")  # held by the running sources
        raise OSError(5, "Input/output error", "/dev/i2c-1")

    monkeypatch.setattr(node, "_build_sources", busy_then_broken)
    new = sim_config(tmp_path)
    new["sources"][0]["name"] = "concourse-b"
    result = node.execute(command("reload_config", config=yaml.safe_dump(new)))
    assert not result.ok and "the running one stays" in (result.detail or "") and "i2c-1" in (result.detail or "")
    assert [r.source.name for r in node._running] == ["concourse"], "the old sources run again"


def test_an_incident_a_crash_left_open_is_ended_when_the_node_starts_again(tmp_path: Path, clock: Clock) -> None:
    # the book lives in memory: after a crash nothing ended the incident, which the console
    # showed open for good, and whose NG112 call was never cancelled
    from s4edge.edge.incident_journal import RESTARTED

    config = parse_config(sim_config(tmp_path))
    first = Node(config, base_dir=tmp_path, clock=clock)
    first.publish_alert(AlertDraft(kind="gas", severity="Moderate", state="new", incident="inc-left-1", zone="z"))
    first.publish_alert(AlertDraft(kind="gas", severity="Extreme", state="update", incident="inc-left-1"))
    first.publish_alert(AlertDraft(kind="smoke", severity="Severe", state="new", incident="inc-ended-1"))
    first.publish_alert(AlertDraft(kind="smoke", severity="Severe", state="end", incident="inc-ended-1"))
    first.outbox.close()  # a crash: no close, no end

    again = Node(config, base_dir=tmp_path, clock=clock)
    again.start()
    try:
        ends = [a for a in stored(again, "alert") if a.state == "end" and a.detail == RESTARTED]
        assert [(a.incident, a.kind, a.severity, a.location.zone) for a in ends] == [
            ("inc-left-1", "gas", "Extreme", "concourse-a")
        ]
    finally:
        again.close(flush_s=0)
    third = Node(config, base_dir=tmp_path, clock=clock)
    third._end_leftover_incidents()  # ended once: nothing left the next time
    try:
        assert [a for a in stored(third, "alert") if a.detail == RESTARTED] == ends
    finally:
        third.outbox.close()


def test_a_journal_that_cannot_be_read_or_written_costs_no_alert(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "outbox.db.open-incidents.json").write_text("{torn")
    node = Node(parse_config(sim_config(tmp_path)), base_dir=tmp_path, clock=clock)
    try:
        assert node.journal.leftover() == []
        (tmp_path / "outbox.db.open-incidents.json").unlink()
        (tmp_path / "outbox.db.open-incidents.json").mkdir()  # a rename onto it fails
        node.publish_alert(AlertDraft(kind="gas", severity="Minor", state="new", incident="inc-nojournal"))
        assert [a.incident for a in stored(node, "alert")] == ["inc-nojournal"]
    finally:
        node.outbox.close()


def test_nodes_whose_outboxes_share_a_folder_keep_a_journal_each(tmp_path: Path, clock: Clock) -> None:
    # one open-incidents.json per folder: n2 started first, ended n1's incident under its own
    # name (which the aggregator refuses) and emptied the file, and n1's stayed open
    one = Node(parse_config(sim_config(tmp_path, node_id="n1")), base_dir=tmp_path, clock=clock)
    one.publish_alert(AlertDraft(kind="flame", severity="Extreme", state="new", incident="inc-n1-flame"))
    one.outbox.close()  # a crash
    data = sim_config(tmp_path, node_id="n2")
    data["outbox"]["path"] = str(tmp_path / "n2.db")
    two = Node(parse_config(data), base_dir=tmp_path, clock=clock)
    two._end_leftover_incidents()
    assert stored(two, "alert") == []
    two.outbox.close()
    again = Node(parse_config(sim_config(tmp_path, node_id="n1")), base_dir=tmp_path, clock=clock)
    again._end_leftover_incidents()
    assert [(a.incident, a.state) for a in stored(again, "alert")][-1] == ("inc-n1-flame", "end")
    again.outbox.close()


def test_a_reload_that_leaves_a_source_unchanged_keeps_it_running_alarms_and_all(node: Node, tmp_path: Path) -> None:
    """Every reload, a harmless one or a refused one, rebuilt every source from zero: an open
    gas or CO alarm read its first sample as no alarm and ended (a Cancel to the PSAP), and a
    CO alarm needed minutes of exposure to come back."""
    node.start()
    node.reload(yaml.safe_dump(sim_config(tmp_path)))  # its files placed as the agent's own load places them
    (running,) = node._running
    node.book.raise_("gas:concourse:mq2", "gas", "Severe", node.clock())
    harmless = sim_config(tmp_path)
    harmless["heartbeat"]["interval_s"] = 31
    assert node.execute(command("reload_config", config=yaml.safe_dump(harmless))).ok
    assert node._running == [running] and running.thread.is_alive()  # the same source, its state and all
    broken = sim_config(tmp_path)
    broken["sources"][0]["scenario"] = str(tmp_path / "no-such-scenario.yaml")
    assert not node.execute(command("reload_config", config=yaml.safe_dump(broken))).ok
    assert node._running == [running] and running.thread.is_alive()
    assert node.book.open_keys() == ["gas:concourse:mq2"]
    assert [a.state for a in stored(node, "alert")] == ["new"]  # no end went out


def test_a_source_that_cannot_be_started_again_after_a_refused_reload_degrades_the_node(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its file gone since it started: the node ran no source at all and said it was well."""
    node.start()

    def busy_then_gone(configs, book):
        raise ConfigError("sources: the GPIO line is busy" if configs[0].name != "concourse" else "scenario gone")

    monkeypatch.setattr(node, "_build_sources", busy_then_gone)
    new = sim_config(tmp_path)
    new["sources"][0]["name"] = "concourse-b"
    assert not node.execute(command("reload_config", config=yaml.safe_dump(new))).ok
    assert node._running == []
    assert "concourse" in node.health.degraded()


def test_a_source_that_fails_after_a_long_good_run_restarts_at_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backoff was never reset: a fault once a day left the sensor blind up to a minute
    more each time, after a week."""
    import threading

    import s4edge.edge.app as app
    from s4edge.edge.sources import SourceContext

    monkeypatch.setattr(app, "SOURCE_HEALTHY_S", 0.0)  # every run counts as a long good one
    waits: list[float] = []

    class Stop:
        def is_set(self) -> bool:
            return len(waits) >= 5

        def wait(self, seconds: float) -> bool:
            waits.append(seconds)
            return False

    class Flaky:
        name = "flaky"

        def run(self, ctx: SourceContext) -> None:
            raise OSError(5, "Input/output error")

    ctx = SourceContext(
        emit=print, telemetry=print, health=node.health.of_source("flaky"), stop=Stop(), clock=node.clock
    )  # type: ignore[arg-type]
    node._supervise(Flaky(), ctx, threading.Event())  # type: ignore[arg-type]
    assert waits == [1.0] * 5
