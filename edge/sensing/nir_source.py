"""The ``nir`` source plugin: a NIR spectrometer (any ``drivers.spectrometer``
Spectrometer, opened by URL) scanned on a period and classified by a PLS-DA model;
a configured precursor class above ``min_confidence`` raises a ``nir_match`` alert.
A spectrum the outlier gate rejects is "unknown": reported in telemetry, not alerted.

    sources:
      - type: nir
        url: socket://127.0.0.1:7000      # or /dev/ttyUSB0
        model: models/precursors.json
        alert_classes: [ammonium_nitrate]
        min_confidence: 0.6
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from s4edge.cloud_sync.messages import Measurement, ModelRef, Severity
from s4edge.drivers.errors import DriverError, SpectrometerTimeout
from s4edge.drivers.spectrometer import Spectrometer, Spectrum
from s4edge.edge.alerts import Content, IncidentBook
from s4edge.edge.config import NodeFile
from s4edge.edge.sensing.chemometrics import UNKNOWN, PLSModel, Prediction, SpectrumError
from s4edge.edge.sensing.health import HealthPolicy, SensorHealth
from s4edge.edge.sources import SourceContext


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["nir"]
    name: str = "nir"
    url: str = Field(description="pyserial URL of the spectrometer: /dev/ttyUSB0, socket://host:port, loop://")
    model: Annotated[Path, NodeFile()] = Field(description="PLS-DA model .json written by `s4edge nir train`")
    period_s: float = Field(default=10.0, gt=0)
    alert_classes: list[str] = Field(min_length=1, description="Classes that raise nir_match")
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    severity: Severity = "Severe"
    timeout_s: float = Field(default=5.0, gt=0)
    health: HealthPolicy = HealthPolicy(stuck_after_s=1e9)  # spectra of one sample may repeat


def align(spectrum: Spectrum, model: PLSModel) -> np.ndarray:
    """The spectrum on the model's wavelength grid (interpolated if the grids differ)."""
    wl, values = spectrum.wavelengths_nm, spectrum.values
    if len(wl) < 2 or len(values) != len(wl):  # a firmware glitch: no points, or fewer values than wavelengths
        raise SpectrumError(f"the spectrometer sent {len(wl)} wavelengths and {len(values)} values; check the device")
    if len(wl) == len(model.wavelengths_nm) and np.allclose(wl, model.wavelengths_nm, atol=0.5):
        return values
    if not np.isfinite(wl).all():
        raise SpectrumError("the spectrometer sent a wavelength that is not a number")
    steps = np.diff(wl)
    if (steps < 0).all():  # a device that reads its grating from the long end: the same spectrum
        wl, values = wl[::-1], values[::-1]
    elif not (steps > 0).all():  # np.interp needs increasing points, and misreads any others silently
        raise SpectrumError("the spectrum's wavelengths neither rise nor fall throughout; check the device's grid")
    lo, hi = model.wavelengths_nm[0], model.wavelengths_nm[-1]
    if wl.min() > lo + 1 or wl.max() < hi - 1:
        raise SpectrumError(f"spectrum covers {wl.min():.0f}–{wl.max():.0f} nm; the model needs {lo:.0f}–{hi:.0f} nm")
    return np.interp(model.wavelengths_nm, wl, values)


class NIRSource:
    def __init__(
        self,
        config: Config,
        book: IncidentBook,
        model: PLSModel,
        model_ref: ModelRef,
        open_spectrometer: Callable[[], Spectrometer],
    ) -> None:
        unknown = set(config.alert_classes) - set(model.targets)
        if model.kind != "classification" or unknown:
            raise ValueError(f"{config.model}: a PLS-DA model with classes {sorted(unknown)} is needed")
        self.name = config.name
        self.config = config
        self.book = book
        self.model = model
        self.model_ref = model_ref
        self._open = open_spectrometer
        self._device: Spectrometer | None = None
        self.health = SensorHealth(config.name, book, config.health)

    def _drop_device(self) -> None:
        close = getattr(self._device, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the port is already gone
                close()
        self._device = None

    def scan(self, now: float) -> Prediction | None:
        try:
            if self._device is None:
                self._device = self._open()
            spectrum = self._device.acquire()
            prediction = self.model.predict(align(spectrum, self.model))[0]
        except (DriverError, SpectrumError, OSError) as exc:
            if isinstance(exc, OSError | DriverError) and not isinstance(exc, SpectrometerTimeout):
                self._drop_device()  # an unplugged cable: reopen the port on the next scan
            self.health.failed(now, str(exc))
            return None
        except Exception as exc:  # what the device sent broke the model: its fault, as poll_once takes it
            self.health.failed(now, f"{type(exc).__name__}: {exc}")
            return None
        self.health.succeeded(now, None)
        for cls in self.config.alert_classes:
            key = f"{self.name}:{cls}"
            if prediction.label == cls and prediction.confidence >= self.config.min_confidence:
                self.book.raise_(
                    key, "nir_match", self.config.severity, now,
                    Content(
                        title=f"NIR match: {cls} ({prediction.confidence:.0%})",
                        detail=f"T² {prediction.t2:.1f} (limit {prediction.t2_limit:.1f}), "
                        f"Q {prediction.q:.3g} (limit {prediction.q_limit:.3g})",
                        measurements=(Measurement(quantity="confidence", value=prediction.confidence, unit="1"),),
                        model=self.model_ref,
                    ),
                )  # fmt: skip
            elif self.book.is_open(key):
                self.book.clear(key, now, detail=f"scan now reads {prediction.label}")
        return prediction

    def run(self, ctx: SourceContext) -> None:
        while not ctx.stop.is_set():
            now = ctx.clock()
            prediction = self.scan(now)
            if prediction is not None:
                ctx.telemetry([
                    Measurement(quantity="nir_confidence", value=prediction.confidence, unit="1", sensor=self.name),
                    Measurement(quantity="nir_q_ratio", value=prediction.q / prediction.q_limit, unit="1",
                                sensor=self.name),
                ])  # fmt: skip
                state = "unknown spectrum" if prediction.label == UNKNOWN else f"ok: {prediction.label}"
                ctx.health.set(self.name, state)
            else:
                ctx.health.set(self.name, self.health.state)
            ctx.stop.wait(self.health.delay(self.config.period_s))


def build(config: Config, book: IncidentBook) -> NIRSource:
    from s4edge.drivers.nir_serial import SerialSpectrometer
    from s4edge.edge.sensing.nir_model import load_model

    model, meta = load_model(config.model)
    ref = ModelRef(name=str(meta["name"]), version=str(meta["version"]), sha256=str(meta["sha256"]))
    return NIRSource(config, book, model, ref, lambda: SerialSpectrometer(config.url, timeout_s=config.timeout_s))
