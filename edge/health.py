"""What the heartbeat reports: per-sensor states that sources write, each camera's
vision figures, and the board's own vitals (CPU, memory, SoC temperature); the node's
liveness towards systemd (sd_notify); and the fault log, which puts every fault and
recovery the node publishes on its console too."""

from __future__ import annotations

import logging
import os
import re
import socket
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from s4edge.cloud_sync.outbox import is_disk_full
from s4edge.edge.alerts import AlertDraft

log = logging.getLogger(__name__)

# Linux thermal sysfs ABI: /sys/class/thermal/thermal_zone<N>/temp, millidegrees Celsius.
THERMAL_ROOT = Path("/sys/class/thermal")
MAX_STATES = 64  # Heartbeat.sensors holds at most 64 entries
# Numbers a vision pipeline reports per camera; the heartbeat has a field for each.
VISION_FIGURES = ("camera_fps", "inference_ms", "dropped_frames")
# The outbox's own faults: a full disk (SQLite's SQLITE_FULL, https://sqlite.org/rescode.html#full),
# or any other error that keeps it from storing.
DISK_FULL = "disk_full"
OUTBOX_FAULT = "outbox"
# Alerts the outbox could not store, kept in memory (edge.unstored_alerts): a count, not a
# degraded part of its own; the outbox's fault says why.
UNSTORED_ALERTS = "alerts_unstored"
# The alert kinds that report a node's own part failing (docs/architecture.md, "Bad input").
FAULT_KINDS = frozenset({"sensor_fault", "camera_fault"})
DEGRADED_PREFIXES = ("fault", "failed")  # a state that marks its part degraded in the status


@dataclass(frozen=True)
class VisionFigures:
    """Over all cameras: fps and inference time are means (a per-camera rate, comparable
    with each camera's configured fps), dropped frames a sum."""

    camera_fps: float | None = None
    inference_ms: float | None = None
    dropped_frames: int | None = None


class Health:
    """Sensor and source states by name; sources write, the heartbeat reads."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._owners: dict[str, str] = {}  # state key → the source that wrote it
        self._figures: dict[str, dict[str, float]] = {}  # figure → source → value
        self._lock = threading.Lock()

    def set(self, key: str, value: Any, owner: str | None = None) -> None:
        key = key[:128]
        with self._lock:
            if key in self._states or len(self._states) < MAX_STATES:
                self._states[key] = str(value)[:128]
                if owner is not None:
                    self._owners[key] = owner

    def of_source(self, source: str) -> SourceHealth:
        """The view a source writes through: its vision figures are kept per source."""
        return SourceHealth(self, source)

    def record(self, source: str, figure: str, value: float) -> None:
        with self._lock:
            self._figures.setdefault(figure, {})[source] = value

    def forget(self, source: str) -> None:
        """A stopped source's figures and states no longer count: a source removed by a
        config reload must not keep the node degraded."""
        with self._lock:
            for values in self._figures.values():
                values.pop(source, None)
            for key in [k for k, owner in self._owners.items() if owner == source] + [source]:
                self._states.pop(key, None)
                self._owners.pop(key, None)

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    def set_outbox(self, failure: BaseException | None, unstored_alerts: int = 0) -> None:
        """The outbox's last write: a full disk is a ``disk_full`` fault, any other error an
        ``outbox`` fault, and a write that succeeds again clears both. ``unstored_alerts``:
        the alerts it could not store yet, which the node keeps in memory."""
        key = DISK_FULL if is_disk_full(failure) else OUTBOX_FAULT
        with self._lock:
            for stale in {DISK_FULL, OUTBOX_FAULT} - ({key} if failure is not None else set()):
                self._states.pop(stale, None)
            if not unstored_alerts:
                self._states.pop(UNSTORED_ALERTS, None)
        if failure is not None:
            self.set(key, f"fault: {failure}")
        if unstored_alerts:
            self.set(UNSTORED_ALERTS, f"{unstored_alerts} kept in memory until the outbox stores them")

    def vision(self) -> VisionFigures:
        with self._lock:
            fps, ms, dropped = (list(self._figures.get(f, {}).values()) for f in VISION_FIGURES)
        return VisionFigures(
            camera_fps=round(statistics.fmean(fps), 2) if fps else None,
            inference_ms=round(statistics.fmean(ms), 2) if ms else None,
            dropped_frames=int(sum(dropped)) if dropped else None,
        )

    def degraded(self) -> list[str]:
        return list(self.degraded_states())[:32]

    def degraded_states(self) -> dict[str, str]:
        """The parts the retained status lists as degraded, with their states."""
        return {key: value for key, value in self.states().items() if value.startswith(DEGRADED_PREFIXES)}


class FaultLog:
    """What the node publishes about its own faults goes through the log as well, so that
    ``agent run`` shows it on the console (or as JSON lines with ``--log-format json``):
    each fault alert (``sensor_fault``, ``camera_fault``) at WARNING when it opens or its
    reason changes and at INFO when it ends; each part the status lists as degraded (a
    camera, a source that failed, a full disk) at WARNING when it becomes degraded and at
    INFO when it is well again. JSON lines carry ``event`` (fault, fault_changed,
    recovered), ``part`` or ``fault_kind`` and ``incident``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log.getChild("faults")
        self._open: dict[str, str | None] = {}  # fault incident → the reason last logged
        self._degraded: dict[str, str] = {}
        self._lock = threading.Lock()

    def alert(self, draft: AlertDraft) -> None:
        """An alert the node has just stored; only fault kinds are logged."""
        if draft.kind not in FAULT_KINDS:
            return
        extra = {"fault_kind": draft.kind, "incident": draft.incident}
        with self._lock:
            if draft.state == "end":
                self._open.pop(draft.incident, None)
                self._log.info(
                    "%s over: %s — %s", draft.kind, draft.title, draft.detail, extra={"event": "recovered", **extra}
                )
            elif draft.incident not in self._open:
                self._open[draft.incident] = draft.detail
                self._log.warning(
                    "%s: %s — %s", draft.kind, draft.title, draft.detail, extra={"event": "fault", **extra}
                )
            elif self._open[draft.incident] != draft.detail:
                self._open[draft.incident] = draft.detail
                self._log.warning(
                    "%s continues: %s — %s", draft.kind, draft.title, draft.detail,
                    extra={"event": "fault_changed", **extra},
                )  # fmt: skip

    def parts(self, degraded: dict[str, str], states: dict[str, str]) -> None:
        """The degraded parts now (``Health.degraded_states``) against those last seen;
        ``states`` says what a part that recovered reports now."""
        with self._lock:
            for part, state in degraded.items():
                if part not in self._degraded:
                    self._log.warning("degraded: %s — %s", part, state, extra={"event": "fault", "part": part})
            for part in self._degraded.keys() - degraded.keys():
                now = states.get(part, "no longer reported")
                self._log.info("recovered: %s — now %s", part, now, extra={"event": "recovered", "part": part})
            self._degraded = dict(degraded)


class SourceHealth:
    """``Health`` as one source sees it (edge.sources.Health protocol)."""

    def __init__(self, health: Health, source: str) -> None:
        self._health = health
        self._source = source

    def set(self, key: str, value: Any) -> None:
        if key in VISION_FIGURES and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            self._health.record(self._source, key, float(value))
        else:
            self._health.set(key, value, owner=self._source)


def find_thermal_zone(root: Path = THERMAL_ROOT) -> Path | None:
    """The lowest-numbered thermal zone with a ``temp`` file (zone 0 is the SoC on the
    supported boards), or None on a machine without one (a VM, a container)."""
    zones = [
        (int(m.group(1)), p) for p in root.glob("thermal_zone*/temp") if (m := re.search(r"(\d+)$", p.parent.name))
    ]
    return min(zones)[1] if zones else None


def soc_temp_c(zone: Path | None) -> float | None:
    if zone is None:
        return None
    try:
        return int(zone.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class VitalSigns:
    cpu_percent: float
    mem_mb: float
    soc_temp_c: float | None


class Vitals:
    """CPU and memory of this process (psutil) and the SoC temperature from ``thermal_zone``
    (the config's ``heartbeat.thermal_zone``; found in sysfs when None)."""

    def __init__(self, thermal_zone: Path | None = None) -> None:
        self.thermal_zone = thermal_zone or find_thermal_zone()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement window

    def read(self) -> VitalSigns:
        return VitalSigns(
            cpu_percent=self._process.cpu_percent(None),
            mem_mb=self._process.memory_info().rss / 1e6,
            soc_temp_c=soc_temp_c(self.thermal_zone),
        )


class ServiceNotifier:
    """sd_notify(3) without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``.
    Without that variable (not started by systemd with Type=notify) every call is a no-op."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environment(cls) -> ServiceNotifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    def notify(self, state: str) -> bool:
        if not self.address:
            return False
        # sd_notify(3): a leading "@" names a socket in the abstract namespace.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never wait: with the listener's queue full, a blocking send would stall the loop
                # that pings the watchdog and publishes the heartbeats; a ping lost is sent again
                sock.sendto(state.encode(), socket.MSG_DONTWAIT, target)
        except OSError as exc:
            if not self._warned:  # once: a missing socket would otherwise log every tick
                log.warning("sd_notify to %s failed (%s); systemd may restart the agent", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
