"""A node's health at a glance: online, stale or offline; its vitals as numbers; each camera's
stage timings as numbers; and one reason per thing that is not OK, for the console's badges.

Works on the API's node dict (``views.node_dict``) and adds to it; nothing here reads the store.
"""

from __future__ import annotations

import re
from typing import Any

VITALS = (
    "camera_fps", "inference_ms", "cpu_percent", "mem_mb", "soc_temp_c", "outbox_depth", "dropped_frames",
    "telemetry_dropped", "uptime_s",
)  # fmt: skip
STAGES_SUFFIX = ".stages_ms"
# A Raspberry Pi throttles at 80 °C (Raspberry Pi documentation, "Frequency management and
# thermal control"); a Jetson Orin's software throttle starts near 99 °C: warn at the lower one.
HOT_SOC_C = 80.0
BUSY_CPU_PERCENT = 90.0
DEEP_OUTBOX = 1000  # rows waiting: the node has not reached the broker for a while
_PAIR = re.compile(r"""['"]?([A-Za-z0-9_.:-]+)['"]?\s*:\s*(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)""")
_BAD_STATE = ("fault", "failed", "error", "stalled", "disk_full")
CONDITIONS = ("online", "stale", "offline", "unknown")  # what ``condition`` says
# A node's clock further off than this dates its alerts wrong: the console orders incidents
# by the node's time, and a year behind puts a new one at the bottom. NTP keeps it under 1 s.
CLOCK_OFF_S = 60.0


def parse_stages(text: str) -> dict[str, float]:
    """A camera's stage timings from the heartbeat. The node sends them as the text of a mapping
    (``"{'motion': 0.57, 'infer': 41.2}"``): its numbers are read back, nothing is evaluated."""
    return {name: float(value) for name, value in _PAIR.findall(text)}


def condition(node: dict[str, Any]) -> str:
    if node.get("state") == "offline":
        return "offline"
    if node.get("stale"):
        return "stale"
    if node.get("state") == "online":
        return "online"
    return "unknown"


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def summarise(node: dict[str, Any], position: dict[str, Any] | None = None) -> dict[str, Any]:
    """``node`` with ``condition``, ``vitals``, ``stages_ms`` (camera → stage → ms), ``parts``
    (every other reported state), ``problems`` (part, reason) and ``location``."""
    health = node.get("health") or {}
    sensors: dict[str, str] = health.get("sensors") or {}
    stages = {
        key[: -len(STAGES_SUFFIX)]: parse_stages(str(value))
        for key, value in sensors.items()
        if key.endswith(STAGES_SUFFIX)
    }
    parts = {key: str(value) for key, value in sensors.items() if not key.endswith(STAGES_SUFFIX)}
    state = condition(node)
    problems: list[dict[str, str]] = []
    if state == "offline":
        problems.append({"part": "node", "reason": "offline (its last will, or it said so)"})
    elif state == "stale":
        problems.append({"part": "node", "reason": f"no heartbeat since {node.get('heartbeat_at') or 'start'}"})
    elif state == "unknown":
        problems.append({"part": "node", "reason": "no status received yet"})
    for part in node.get("degraded") or []:
        problems.append({"part": str(part), "reason": f"degraded: {parts.get(str(part), 'reported by the node')}"})
    degraded = {str(p) for p in node.get("degraded") or []}
    for part, value in parts.items():
        if part not in degraded and value.lower().startswith(_BAD_STATE):
            problems.append({"part": part, "reason": value})
    vitals = {key: health.get(key) for key in VITALS if health.get(key) is not None}
    if (vitals.get("soc_temp_c") or 0) >= HOT_SOC_C:
        problems.append({"part": "board", "reason": f"SoC at {vitals['soc_temp_c']:.0f} °C (throttles at 80)"})
    if (vitals.get("cpu_percent") or 0) >= BUSY_CPU_PERCENT:
        problems.append({"part": "board", "reason": f"CPU at {vitals['cpu_percent']:.0f} %"})
    if (vitals.get("outbox_depth") or 0) >= DEEP_OUTBOX:
        problems.append({"part": "outbox", "reason": f"{vitals['outbox_depth']} messages waiting to be sent"})
    if vitals.get("telemetry_dropped"):
        problems.append({"part": "outbox", "reason": f"{vitals['telemetry_dropped']} telemetry readings dropped"})
    if stages and vitals.get("camera_fps") == 0:
        problems.append({"part": "camera", "reason": "0 frames per second"})
    offset = node.get("clock_offset_s")
    if offset is not None and abs(offset) > CLOCK_OFF_S:
        way = "behind" if offset < 0 else "ahead of"
        problems.append(
            {"part": "clock", "reason": f"{_span(abs(offset))} {way} the aggregator's: its alerts are misdated (NTP?)"}
        )
    return {
        **node,
        "condition": state,
        "vitals": vitals,
        "stages_ms": stages,
        "parts": parts,
        "problems": problems,
        "location": position,
    }
