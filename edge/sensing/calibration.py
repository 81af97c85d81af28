"""Per-sensor calibration (MQ R0) kept in a JSON file beside the node config, with the
date it was taken, so a technician can see when a sensor was last calibrated.

    {"version": 1, "sensors": {"mq2-hall": {"model": "mq2", "r0_ohm": 9821.4,
     "calibrated_at": "2026-11-26T01:40:00+00:00", "samples": 50,
     "temperature_c": 21.3, "humidity_rh": 44.0}}}
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s4edge.edge.config import problems_by_key
from s4edge.files import replace_file


class SensorCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    r0_ohm: float = Field(gt=0)
    calibrated_at: datetime
    samples: int = Field(ge=1)
    temperature_c: float | None = None
    humidity_rh: float | None = None


class CalibrationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    sensors: dict[str, SensorCalibration] = Field(default_factory=dict)


class CalibrationError(ValueError):
    """The calibration file cannot be read; it names the file and what is wrong."""


def load_calibrations(path: Path) -> CalibrationFile:
    if not path.exists():
        return CalibrationFile()
    try:
        return CalibrationFile.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        # a ValidationError would quote the values read: the file may be anything, a secret included
        problem = problems_by_key(exc) if isinstance(exc, ValidationError) else str(exc)
        raise CalibrationError(
            f"{path}: not a valid sensor calibration file ({problem}); fix it or move it away and recalibrate"
        ) from None


def save_calibration(path: Path, name: str, entry: SensorCalibration) -> None:
    """Add or replace one sensor's entry; the file is replaced atomically."""
    data = load_calibrations(path)
    data.sensors[name] = entry
    replace_file(path, data.model_dump_json(indent=2) + "\n")
