"""PLS on the Eigenvector corn data (instrument 1), the outlier gate, model files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from sklearn.cross_decomposition import PLSRegression

from s4edge.edge.sensing.chemometrics import UNKNOWN, Preprocess, SpectrumError, fit
from s4edge.edge.sensing.nir_model import ModelFileError, load_model, save_model


@pytest.fixture(scope="module")
def corn() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2].parent / "shared/data/nir/corn/Data_Corn.mat"
    if not path.exists():
        pytest.skip(f"{path} is absent: the corn NIR data lives in ../shared")
    mat = scipy.io.loadmat(path)
    # Keys: Xcal1..3 (30×700), Xtest1..3 (20×700), ycal (30×1), ytest (20×1), wv (1×700, nm)
    return {k: v for k, v in mat.items() if not k.startswith("__")}


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.ravel(a) - np.ravel(b)) ** 2)))


def test_pls_on_corn_instrument_1(corn: dict[str, Any]) -> None:
    x, y, xt, yt = corn["Xcal1"], corn["ycal"].ravel(), corn["Xtest1"], corn["ytest"].ravel()
    model = fit(x, y, corn["wv"].ravel())
    predicted = np.array([p.values[0] for p in model.predict(xt)])
    rmsep = rmse(predicted, yt)
    bare = PLSRegression(n_components=model.n_components).fit(x, y).predict(xt)
    bare_rmsep = rmse(bare, yt)
    print(
        json.dumps(
            {"n_components": model.n_components, "rmsep_snv_sg1": round(rmsep, 4),
             "rmsep_bare_sklearn_same_lv": round(bare_rmsep, 4), "ytest_sd": round(float(yt.std()), 4)}
        )
    )  # fmt: skip
    assert 1 <= model.n_components <= 12
    assert rmsep < 0.6 * yt.std()  # far better than predicting the mean
    assert rmsep < 1.5 * bare_rmsep  # and not worse than the bare model by much


def test_outlier_gate_passes_real_and_rejects_synthetic_spectra(corn: dict[str, Any]) -> None:
    wv = corn["wv"].ravel().astype(float)
    model = fit(corn["Xcal1"], corn["ycal"].ravel(), wv)
    assert not any(p.outlier for p in model.predict(corn["Xtest1"]))
    real = corn["Xtest1"][0]
    rng = np.random.default_rng(7)
    synthetic = {
        "flat": np.full_like(real, real.mean()),
        "noise": rng.normal(real.mean(), real.std(), real.shape),
        "shifted 10 nm": np.interp(wv - 10, wv, real),
    }
    for name, spectrum in synthetic.items():
        assert model.predict(spectrum)[0].outlier, name


def test_bad_spectra_get_clear_errors(corn: dict[str, Any]) -> None:
    model = fit(corn["Xcal1"], corn["ycal"].ravel(), corn["wv"].ravel(), n_components=3)
    with_nan = corn["Xtest1"][:2].copy()
    with_nan[1, 10] = np.nan
    with pytest.raises(SpectrumError, match=r"spectra \[1\] contain NaN"):
        model.predict(with_nan)
    with pytest.raises(SpectrumError, match="has 699 points, the model expects 700"):
        model.predict(corn["Xtest1"][0, :-1])


def test_plsda_reports_unknown_and_model_round_trips(tmp_path: Path, corn: dict[str, Any]) -> None:
    x, y = corn["Xcal1"], corn["ycal"].ravel()
    labels = np.where(y > np.median(y), "high", "low")
    model = fit(x, labels, corn["wv"].ravel(), kind="classification", preprocess=Preprocess(sg_window=0))
    assert model.targets == ["high", "low"]
    assert model.predict(np.full(700, 0.3))[0].label == UNKNOWN
    digest = save_model(model, tmp_path / "corn.json", name="corn-da")
    loaded, meta = load_model(tmp_path / "corn.json")
    assert meta["sha256"] == digest
    before = np.array([p.values for p in model.predict(corn["Xtest1"])])
    after = np.array([p.values for p in loaded.predict(corn["Xtest1"])])
    assert np.array_equal(before, after)
    npz = tmp_path / "corn.npz"
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    npz.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(tmp_path / "corn.json")
    (tmp_path / "corn.json").write_text("{")
    with pytest.raises(ModelFileError, match="train it again"):
        load_model(tmp_path / "corn.json")


def test_reloaded_regression_matches_scikit_learn(tmp_path: Path, corn: dict[str, Any]) -> None:
    pre = Preprocess(snv=False, sg_window=0)
    x, y = corn["Xcal1"], corn["ycal"].ravel()
    model = fit(x, y, corn["wv"].ravel(), preprocess=pre, n_components=6)
    save_model(model, tmp_path / "m.json", name="corn")
    loaded, _ = load_model(tmp_path / "m.json")
    ours = np.array([p.values[0] for p in loaded.predict(corn["Xtest1"])])
    theirs = PLSRegression(n_components=6, scale=False).fit(x, y).predict(corn["Xtest1"]).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
