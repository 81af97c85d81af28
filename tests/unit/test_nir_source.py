"""The nir source: simulated spectrometer over TCP → PLS-DA → nir_match alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s4edge.drivers.sim import SimSpectrometer, SpectrometerServer
from s4edge.drivers.spectrometer import Spectrum
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.sensing.chemometrics import UNKNOWN, Preprocess, SpectrumError, fit
from s4edge.edge.sensing.nir_model import load_model, save_model
from s4edge.edge.sensing.nir_source import Config, align, build
from s4edge.edge.sensing.nir_synthetic import WAVELENGTHS_NM, synthetic_library, synthetic_spectrum


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, labels, wl = synthetic_library(per_class=15)
    model = fit(x, labels, wl, kind="classification", preprocess=Preprocess(sg_window=11))
    path = tmp_path_factory.mktemp("nir") / "precursors.json"
    save_model(model, path, name="precursors-synthetic")
    return path


def test_precursor_match_raises_then_clears(model_path: Path) -> None:
    rng = np.random.default_rng(42)
    showing = {"name": "ammonium_nitrate"}

    def sample() -> Spectrum:
        if showing["name"] == "flat":
            return Spectrum(WAVELENGTHS_NM.copy(), np.full(WAVELENGTHS_NM.shape, 1.0))
        return synthetic_spectrum(showing["name"], rng)

    drafts: list[AlertDraft] = []
    book = IncidentBook(drafts.append)
    with SpectrometerServer(SimSpectrometer(sample)) as server:
        config = Config(type="nir", url=server.url, model=model_path, alert_classes=["ammonium_nitrate", "urea"])
        source = build(config, book)
        first = source.scan(0.0)
        assert first is not None and first.label == "ammonium_nitrate" and first.confidence >= 0.6
        showing["name"] = "sugar"
        assert source.scan(10.0).label == "sugar"  # type: ignore[union-attr]
        showing["name"] = "flat"
        assert source.scan(20.0).label == UNKNOWN  # type: ignore[union-attr]
    assert [(d.kind, d.state) for d in drafts] == [("nir_match", "new"), ("nir_match", "end")]
    assert drafts[0].model is not None and drafts[0].model.name == "precursors-synthetic"
    assert len(drafts[0].model.sha256) == 64


def test_spectrometer_gone_is_a_sensor_fault(model_path: Path) -> None:
    drafts: list[AlertDraft] = []
    with SpectrometerServer(SimSpectrometer()) as server:
        url = server.url
    config = Config(type="nir", url=url, model=model_path, alert_classes=["urea"], timeout_s=0.2)
    source = build(config, IncidentBook(drafts.append))
    for t in range(4):
        assert source.scan(float(t)) is None
    assert [(d.kind, d.state) for d in drafts] == [("sensor_fault", "new")]
    with pytest.raises(ValueError, match="PLS-DA model with classes"):
        build(config.model_copy(update={"alert_classes": ["tnt"]}), IncidentBook(drafts.append))


def test_a_replugged_spectrometer_is_reopened_and_the_fault_clears(model_path: Path) -> None:
    drafts: list[AlertDraft] = []
    with SpectrometerServer(SimSpectrometer()) as first:
        port = first.port
        config = Config(type="nir", url=first.url, model=model_path, alert_classes=["urea"], timeout_s=0.2)
        source = build(config, IncidentBook(drafts.append))
        assert source.scan(0.0) is not None
    for t in (1.0, 2.0, 3.0):  # unplugged: the open port is dead
        assert source.scan(t) is None
    assert [(d.kind, d.state) for d in drafts] == [("sensor_fault", "new")]
    with SpectrometerServer(SimSpectrometer(), port=port):  # plugged back in
        assert source.scan(4.0) is not None, "the source reopened the port"
    assert [(d.kind, d.state) for d in drafts] == [("sensor_fault", "new"), ("sensor_fault", "end")]


def test_a_spectrum_sent_long_end_first_is_the_same_spectrum(model_path: Path) -> None:
    # np.interp needs rising points and misreads falling ones without a word: a peak moved
    model, _ = load_model(model_path)
    wl = np.linspace(model.wavelengths_nm[0] - 5, model.wavelengths_nm[-1] + 5, 97)  # another grid than the model's
    values = np.exp(-(((wl - wl.mean()) / 40) ** 2))
    rising = align(Spectrum(wl, values), model)
    np.testing.assert_allclose(align(Spectrum(wl[::-1], values[::-1]), model), rising)
    zigzag = wl.copy()
    zigzag[[10, 11]] = zigzag[[11, 10]]
    for bad in (zigzag, np.where(np.arange(wl.size) == 3, np.nan, wl)):
        with pytest.raises(SpectrumError):
            align(Spectrum(bad, values), model)


def test_a_spectrum_with_no_points_is_the_devices_fault(model_path: Path) -> None:
    # a firmware glitch (a SPECTRUM frame of 0 points, its CRC right) raised a bare ValueError
    # out of scan: the node restarted the source for ever, and no sensor_fault was raised
    drafts: list[AlertDraft] = []
    with SpectrometerServer(SimSpectrometer(lambda: Spectrum(np.array([]), np.array([])))) as server:
        config = Config(type="nir", url=server.url, model=model_path, alert_classes=["urea"], timeout_s=1)
        source = build(config, IncidentBook(drafts.append))
        for t in range(3):
            assert source.scan(float(t)) is None
    assert [(d.kind, d.state) for d in drafts] == [("sensor_fault", "new")]
    assert "0 wavelengths" in source.health.state
