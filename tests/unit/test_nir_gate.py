"""The NIR outlier gate rejects good spectra at the rate its α says (docs/nir.md).

Two statistics, T² and Q, each with an upper (1 − α) limit: a good spectrum is rejected
with probability about 1 − (1 − α)² ≈ 2α. Checked on data whose distribution is known
(Gaussian latent variables) and on real spectra (corn, three instruments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from s4edge.edge.sensing.chemometrics import Preprocess, box_limit, fit
from s4edge.edge.sensing.nir_model import ModelFileError, load_model, save_model

RAW = Preprocess(snv=False, sg_window=0)


def latent_data(rng: np.random.Generator, basis: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian latent variables that carry y, eight weaker Gaussian nuisance
    directions (a residual with a few dominant directions, as spectra have) and white noise."""
    sd = np.r_[3.0, 2.0, 1.0, np.geomspace(0.4, 0.05, 8)]
    z = rng.normal(size=(m, len(sd))) * sd
    return z @ basis + 0.01 * rng.normal(size=(m, basis.shape[1])), z[:, :3] @ [1.0, 0.6, 0.2]


def test_gate_rate_matches_alpha_on_gaussian_latent_data() -> None:
    # 100 spectra of 100 points, 3 components, α = 0.05 on each statistic: each rejects 5 %
    # of new good spectra and the gate 1 − 0.95² = 9.75 %. Twenty calibration sets, 4000 new
    # spectra each: the limits of one calibration set scatter (the mean over 20 sets stays
    # within ±1.2 points of 5 % across seeds), their mean must not.
    alpha, rng = 0.05, np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(100, 11)))[0].T
    t2_rate, q_rate, both, reported = [], [], [], []
    for _ in range(20):
        x, y = latent_data(rng, basis, 100)
        model = fit(x, y, np.arange(100.0), preprocess=RAW, n_components=3, max_components=3, alpha=alpha)
        new = model.predict_batch(latent_data(rng, basis, 4000)[0])
        t2_rate.append(np.mean(new.t2 > new.t2_limit))
        q_rate.append(np.mean(new.q > new.q_limit))
        both.append(np.mean(new.outlier))
        assert model.gate is not None
        reported.append(model.gate.cv_rejection_rate)
    expected = 1 - (1 - alpha) ** 2
    print(json.dumps({"t2": np.mean(t2_rate), "q": np.mean(q_rate), "gate": np.mean(both), "expected": expected,
                      "reported_cv": np.mean(reported)}))  # fmt: skip
    assert 0.7 * alpha <= np.mean(t2_rate) <= 1.3 * alpha
    assert 0.7 * alpha <= np.mean(q_rate) <= 1.3 * alpha
    assert 0.85 * expected <= np.mean(both) <= 1.15 * expected
    # what `nir train` reports (cross-validated, on the calibration set) tells the same story
    assert 0.8 * expected <= np.mean(reported) <= 1.25 * expected


def test_box_limit_of_a_scaled_chi2_sample_is_its_quantile() -> None:
    # g·χ²(h) with g = 2, h = 6: the 99 % quantile is 2·16.81; from 5000 values the
    # F-corrected limit is within a few percent of it
    values = 2.0 * np.random.default_rng(0).chisquare(6, size=5000)
    assert box_limit(values, 0.01) == pytest.approx(2.0 * 16.8119, rel=0.03)
    assert box_limit(np.full(10, 3.0), 0.01) == 3.0  # no spread: the largest value


@pytest.fixture
def corn(shared: Path) -> dict[str, Any]:
    path = shared / "data/nir/corn/Data_Corn.mat"
    if not path.exists():
        pytest.skip(f"{path} is absent: the corn NIR data lives in ../shared")
    mat = scipy.io.loadmat(path)
    # 80 corn samples measured on three instruments (m5, mp5, mp6): cal 30 + test 20 + trans 30
    x = {i: np.vstack([mat[f"Xcal{i}"], mat[f"Xtest{i}"], mat[f"Xtrans{i}"]]) for i in (1, 2, 3)}
    y = np.vstack([mat["ycal"], mat["ytest"], mat["ytrans"]]).ravel()
    return {"x": x, "y": y, "wv": mat["wv"].ravel().astype(float)}


def test_corn_held_out_false_rejection_and_foreign_instruments(corn: dict[str, Any]) -> None:
    # Calibrate on 60 of an instrument's 80 spectra, judge its other 20, 20 random splits
    # per instrument. Expected ≈ 2α = 2 % (α = 0.01 on T² and on Q). Allowed: 3 % pooled,
    # 4 % per instrument: 80 spectra per instrument (one is 1.25 % of them) and real
    # spectra have heavier tails than a χ² limit assumes. The gate before (F limit for T²,
    # Jackson–Mudholkar on CV residuals for Q) rejected 3.9 % pooled here (4.5 % on m5), with
    # training residuals alone 8–15 %.
    x, y, wv = corn["x"], corn["y"], corn["wv"]
    held, reported, foreign = {}, {}, {}
    for inst in (1, 2, 3):
        rng = np.random.default_rng(0)
        rates, cv_rates = [], []
        for _ in range(20):
            order = rng.permutation(80)
            model = fit(x[inst][order[:60]], y[order[:60]], wv)
            rates.append(np.mean(model.predict_batch(x[inst][order[60:]]).outlier))
            assert model.gate is not None
            cv_rates.append(model.gate.cv_rejection_rate)
        held[inst], reported[inst] = float(np.mean(rates)), float(np.mean(cv_rates))
        # the last model meets the other instruments' 80 spectra each
        foreign[inst] = {j: float(np.mean(model.predict_batch(x[j]).outlier)) for j in (1, 2, 3) if j != inst}
    print(json.dumps({"held_out": held, "reported_cv": reported, "foreign": foreign}))
    assert np.mean(list(held.values())) <= 0.03
    assert max(held.values()) <= 0.04
    # the rate `nir train` reports is a fair forecast of the held-out one
    assert abs(np.mean(list(reported.values())) - np.mean(list(held.values()))) <= 0.025
    # m5 against mp5/mp6: a foreign instrument is rejected. (mp5 and mp6 are two units of
    # one model whose spectra differ less than corn samples do: 50–90 % rejected.)
    assert foreign[1][2] >= 0.95 and foreign[1][3] >= 0.95
    assert foreign[2][1] >= 0.95 and foreign[3][1] >= 0.95


def test_model_files_record_the_gate_and_old_files_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(50, 11)))[0].T
    x, y = latent_data(rng, basis, 40)
    model = fit(x, y, np.arange(50.0), preprocess=RAW, n_components=3, max_components=3, alpha=0.02)
    save_model(model, tmp_path / "m.json", name="m")
    loaded, meta = load_model(tmp_path / "m.json")
    assert loaded.gate == model.gate and meta["gate"]["method"] == "cv-box" and meta["gate"]["alpha"] == 0.02
    assert (loaded.t2_limit, loaded.q_limit) == (model.t2_limit, model.q_limit)
    # a file written before the gate was calibrated: no "gate" object, its stored limits kept
    del meta["gate"]
    (tmp_path / "m.json").write_text(json.dumps(meta))
    old, _ = load_model(tmp_path / "m.json")
    assert old.gate is None and old.q_limit == model.q_limit
    np.testing.assert_array_equal(old.predict_batch(x).outlier, model.predict_batch(x).outlier)
    (tmp_path / "m.json").write_text(json.dumps({**meta, "gate": {"method": "cv-box"}}))
    with pytest.raises(ModelFileError, match=r"model content is incomplete.*alpha"):
        load_model(tmp_path / "m.json")
