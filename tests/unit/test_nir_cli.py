"""`s4edge nir train | predict | eval` on files: batches of spectra in one pass, metrics
that match scikit-learn's, and bad input as one line on stderr with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from sklearn.metrics import mean_squared_error, r2_score
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.drivers.spectrometer import Spectrum
from s4edge.edge.sensing.chemometrics import PLSModel, Preprocess, fit
from s4edge.edge.sensing.nir_model import save_model
from s4edge.edge.sensing.nir_source import align
from s4edge.edge.sensing.nir_synthetic import WAVELENGTHS_NM, synthetic_library, synthetic_spectrum

runner = CliRunner()
WL = WAVELENGTHS_NM


def write_innospectra(path: Path, spectrum: Spectrum) -> Path:
    """An InnoSpectra-style export: header block, scan data mark, column header, rows."""
    rows = "\n".join(
        f"{float(w)!r},{float(a)!r},1000000,{float(1e6 * 10**-a)!r}"
        for w, a in zip(spectrum.wavelengths_nm, spectrum.values)
    )
    path.write_text(
        "***Scan Config Information***,,\nModel Name:,NIR-F320,\n***Scan Data***,,\n"
        f"Wavelength (nm),Absorbance (AU),Reference Signal (unitless),Sample Signal (unitless)\n{rows}\n"
    )
    return path


def write_csv_matrix(path: Path, x: np.ndarray, wl: np.ndarray, y: np.ndarray | None = None) -> Path:
    head = "sample," + ("y," if y is not None else "") + ",".join(f"{w:.6f}" for w in wl)
    lines = [
        f"s{i}," + (f"{float(y[i])!r}," if y is not None else "") + ",".join(repr(float(v)) for v in row)
        for i, row in enumerate(x)
    ]
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


@pytest.fixture(scope="module")
def plsda(tmp_path_factory: pytest.TempPathFactory) -> tuple[PLSModel, Path]:
    x, labels, wl = synthetic_library(per_class=15)
    model = fit(x, labels, wl, kind="classification", preprocess=Preprocess(sg_window=11), max_components=6)
    path = tmp_path_factory.mktemp("nir") / "precursors.json"
    save_model(model, path, name="precursors")
    return model, path


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A PLS model of y from spectra on the synthetic grid, and a test set with reference values."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(len(WL), 8)))[0].T

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(size=(m, 8)) * np.r_[3.0, 2.0, 1.0, np.geomspace(0.3, 0.05, 5)]
        return 1.0 + z @ basis + 0.005 * rng.normal(size=(m, len(WL))), 5.0 + z[:, :3] @ [1.0, 0.5, 0.2]

    x, y = draw(80)
    model = fit(x, y, WL, preprocess=Preprocess(snv=False, sg_window=0), max_components=6)
    path = tmp_path_factory.mktemp("nir") / "reg.json"
    save_model(model, path, name="reg")
    xt, yt = draw(40)
    xt[:3] += rng.normal(0.0, 0.2, size=(3, len(WL)))  # three spectra unlike the calibration set
    return {"model": model, "path": path, "x": xt, "y": yt}


def jsonl(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_batch_predict_of_matrices_and_exports_equals_single_predictions(
    plsda: tuple[PLSModel, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = plsda
    rng = np.random.default_rng(11)
    x = np.vstack([synthetic_spectrum(n, rng).values for n in ("urea", "sugar", "ammonium_nitrate", "urea")])
    x = np.vstack([x, np.full(len(WL), 1.0)])  # a flat spectrum: the gate says unknown
    scipy.io.savemat(tmp_path / "s.mat", {"Xtest": x, "wv": WL[None, :], "y": np.arange(5.0)[:, None]})
    np.savez(tmp_path / "s.npz", Xtest=x[:3], wavelengths_nm=WL)
    write_csv_matrix(tmp_path / "s.csv", x[3:], WL)
    # two exports of one device whose pixel calibration puts its grid 0.3 nm off the model's
    scans = [synthetic_spectrum(n, rng) for n in ("sugar", "urea")]
    exports = [write_innospectra(tmp_path / f"e{i}.csv", Spectrum(s.wavelengths_nm + 0.3, s.values)) for i, s in
               enumerate(scans)]  # fmt: skip

    calls: list[int] = []
    batch = PLSModel.predict_batch

    def counted(self: PLSModel, xs: np.ndarray) -> Any:
        calls.append(len(xs))
        return batch(self, xs)

    monkeypatch.setattr(PLSModel, "predict_batch", counted)
    args = ["nir", "predict", "--model", str(path), "--format", "jsonl"]
    files = [str(tmp_path / f) for f in ("s.mat", "s.npz", "s.csv")] + [str(e) for e in exports]
    rows = jsonl(runner.invoke(app, [*args, *files, "--x-key", "Xtest"]))
    assert calls == [5 + 3 + 2 + 2]  # one vectorised call for every spectrum of every file
    monkeypatch.undo()

    expected = [*x, *x[:3], *x[3:], *(align(Spectrum(s.wavelengths_nm + 0.3, s.values), model) for s in scans)]
    assert [r["spectrum"] for r in rows][:6] == [f"{tmp_path}/s.mat:Xtest[{i}]" for i in range(5)] + [
        f"{tmp_path}/s.npz:Xtest[0]"
    ]
    assert rows[8]["spectrum"] == f"{tmp_path}/s.csv:s0" and rows[10]["spectrum"] == str(exports[0])
    for row, spectrum in zip(rows, expected, strict=True):
        single = model.predict(spectrum)[0]
        assert row["label"] == single.label
        assert row["outlier"] == single.outlier
        np.testing.assert_allclose(list(row["scores"].values()), single.values, rtol=1e-9, atol=1e-12)
        assert row["t2"] == pytest.approx(single.t2, rel=1e-9) and row["q"] == pytest.approx(single.q, rel=1e-9)
    assert rows[4]["label"] == "unknown" and rows[0]["label"] == "urea"
    monkeypatch.chdir(tmp_path)  # short names: the table folds none of them
    table = runner.invoke(app, ["nir", "predict", "--model", str(path), "s.npz", "--x-key", "Xtest"])
    assert table.exit_code == 0 and "s.npz:Xtest[2]" in table.stdout and "pass" in table.stdout


def test_a_matrix_on_another_grid_needs_resample(plsda: tuple[PLSModel, Path], tmp_path: Path) -> None:
    path = plsda[1]
    rng = np.random.default_rng(2)
    fine = np.linspace(1590.0, 2410.0, 500)  # covers the model's 1600–2400 nm
    x = np.vstack([np.interp(fine, WL, synthetic_spectrum("urea", rng).values) for _ in range(3)])
    csv = write_csv_matrix(tmp_path / "fine.csv", x, fine)
    refused = runner.invoke(app, ["nir", "predict", "--model", str(path), str(csv)])
    assert refused.exit_code == 2 and "wavelength grid 1590–2410 nm, 500 points differs" in refused.stderr
    rows = jsonl(runner.invoke(app, ["nir", "predict", "--model", str(path), str(csv), "--resample",
                                     "--format", "jsonl"]))  # fmt: skip
    for row, spectrum in zip(rows, x, strict=True):  # as interpolating each row onto the model's grid
        single = plsda[0].predict(np.interp(WL, fine, spectrum))[0]
        assert row["label"] == single.label and row["t2"] == pytest.approx(single.t2, rel=1e-6)


@pytest.mark.parametrize("kind", ["npz", "mat", "csv"])
def test_eval_matches_scikit_learn_metrics(regression: dict[str, Any], tmp_path: Path, kind: str) -> None:
    x, y, model = regression["x"], regression["y"], regression["model"]
    if kind == "npz":
        data, keys = tmp_path / "t.npz", ["--x-key", "X", "--y-key", "y"]
        np.savez(data, X=x, y=y, wavelengths_nm=WL)
    elif kind == "mat":
        data, keys = tmp_path / "t.mat", ["--y-key", "ref"]  # the only matrix of spectra: no --x-key needed
        scipy.io.savemat(data, {"spectra": x, "ref": y[:, None], "wv": WL[None, :]})
    else:
        data, keys = write_csv_matrix(tmp_path / "t.csv", x, WL, y), ["--y-key", "y"]
    args = ["nir", "eval", "--model", str(regression["path"]), "--data", str(data), *keys]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    predicted = model.predict_batch(x)
    metrics = report["targets"]["y0"]
    assert report["n"] == 40
    assert metrics["rmsep"] == pytest.approx(np.sqrt(mean_squared_error(y, predicted.values[:, 0])), rel=1e-9)
    assert metrics["r2"] == pytest.approx(r2_score(y, predicted.values[:, 0]), rel=1e-9)
    assert metrics["bias"] == pytest.approx(float(np.mean(predicted.values[:, 0] - y)), rel=1e-9, abs=1e-12)
    assert report["rejected"] == int(predicted.outlier.sum()) >= 3  # the three unlike spectra at least
    assert report["rejection_rate"] == pytest.approx(predicted.outlier.mean())
    assert report["gate"]["method"] == "cv-box" and report["gate"]["alpha"] == 0.01
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "RMSEP" in table.stdout
    assert f"outlier gate: {report['rejected']} of 40 rejected" in table.stdout


def test_train_reports_the_cross_validated_rejection_rate(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["nir", "train", "--sim", "--out", str(out), "--max-components", "5",
                                 "--alpha", "0.05"])  # fmt: skip
    assert result.exit_code == 0, result.output
    gate = json.loads(result.stdout)["gate"]
    assert gate["method"] == "cv-box" and gate["alpha"] == 0.05 and gate["expected_rejection_rate"] == 0.0975
    assert 0.0 <= gate["cv_rejection_rate"] <= 0.3 and gate["cv_folds"] == 5
    assert json.loads(out.read_text())["gate"]["cv_rejection_rate"] == pytest.approx(
        gate["cv_rejection_rate"], abs=1e-4
    )
    refused = runner.invoke(app, ["nir", "train", "--sim", "--out", str(out), "--alpha", "2"])
    assert refused.exit_code == 2 and "alpha 2.0 is not a tail probability" in refused.stderr


def bad_inputs(tmp: Path, wl: np.ndarray) -> dict[str, tuple[list[str], str]]:
    rng = np.random.default_rng(0)
    x = np.vstack([synthetic_spectrum("urea", rng).values for _ in range(4)])
    np.savez(tmp / "two.npz", A=x, B=x)
    with_nan = x.copy()
    with_nan[2, 7] = np.nan
    np.savez(tmp / "nan.npz", X=with_nan)
    np.savez(tmp / "short.npz", X=x[:, :-5])
    np.savez(tmp / "cube.npz", X=x[None])
    scipy.io.savemat(tmp / "m.mat", {"Xtest": x, "ytest": np.ones((4, 1))})
    write_csv_matrix(tmp / "grid.csv", x, wl + 25.0)
    (tmp / "text.csv").write_text("sample,1600,1604\ns0,0.1,abc\n")
    (tmp / "junk.mat").write_bytes(b"not a mat file at all")
    export = Spectrum(wl.copy(), x[0].copy())
    export.values[10:16] = np.nan  # the sample signal went negative: the scanner writes NaN
    write_innospectra(tmp / "export.csv", export)
    return {
        "missing file": ([str(tmp / "nope.npz")], "nope.npz: no such file"),
        "wrong key": (
            [str(tmp / "m.mat"), "--x-key", "Xcal"],
            "no array 'Xcal' (--x-key); the file holds: Xtest (4×228)",
        ),
        "which key": ([str(tmp / "two.npz")], "give --x-key (arrays: A (4×228), B (4×228))"),
        "grid": ([str(tmp / "grid.csv")], "differs from the model's 1600–2400 nm, 228 points"),
        "NaN": ([str(tmp / "nan.npz")], "nan.npz:X[2]: 1 NaN or infinite points; fix or drop the spectra"),
        "NaN export": ([str(tmp / "export.csv")], "export.csv: 6 NaN or infinite points"),
        "points": ([str(tmp / "short.npz")], "223 points per spectrum and no wavelengths; the model expects 228"),
        "shape": ([str(tmp / "cube.npz")], "give --x-key"),
        "shape keyed": ([str(tmp / "cube.npz"), "--x-key", "X"], "X is 1×4×228; spectra must be samples × wavelengths"),
        "text": ([str(tmp / "text.csv")], "line 2, column 1604: not a number: 'abc'"),
        "not a mat": ([str(tmp / "junk.mat")], "junk.mat: not a readable .mat file"),
        "nothing": ([], "nothing to predict"),
    }


CASES = ["missing file", "wrong key", "which key", "grid", "NaN", "NaN export", "points", "shape", "shape keyed",
         "text", "not a mat", "nothing"]  # fmt: skip


def one_error_line(result: Any, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # never a row of results
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES)
def test_bad_input_to_predict_is_one_line_and_exit_2(plsda: tuple[PLSModel, Path], tmp_path: Path, case: str) -> None:
    args, expected = bad_inputs(tmp_path, WL)[case]
    one_error_line(runner.invoke(app, ["nir", "predict", "--model", str(plsda[1]), *args]), expected)


def test_bad_input_to_eval_is_one_line_and_exit_2(
    regression: dict[str, Any], plsda: tuple[PLSModel, Path], tmp_path: Path
) -> None:
    np.savez(tmp_path / "t.npz", X=regression["x"], y=regression["y"])
    base = ["nir", "eval", "--model", str(regression["path"]), "--data", str(tmp_path / "t.npz")]
    one_error_line(
        runner.invoke(app, [*base, "--y-key", "moisture"]), "no array 'moisture' (--y-key); the file holds: X"
    )
    np.savez(tmp_path / "t.npz", X=regression["x"], y=regression["y"][:-1])
    one_error_line(runner.invoke(app, [*base, "--x-key", "X", "--y-key", "y"]), "y is 39 but X has 40 spectra")
    classes = ["nir", "eval", "--model", str(plsda[1]), "--data", str(tmp_path / "t.npz"), "--y-key", "y"]
    one_error_line(runner.invoke(app, classes), "nir eval scores regression models")
    (tmp_path / "bad.json").write_text("{")
    one_error_line(
        runner.invoke(app, ["nir", "eval", "--model", str(tmp_path / "bad.json"), "--data", "x.npz", "--y-key", "y"]),
        "train it again",
    )


def test_real_innospectra_exports(plsda: tuple[PLSModel, Path], shared: Path) -> None:
    demo = [str(shared / f"data/nir/innospectra/demo{i}.csv") for i in range(3)]
    # demo0 and demo2 have NaN absorbance where the sample signal went negative
    one_error_line(runner.invoke(app, ["nir", "predict", "--model", str(plsda[1]), *demo]), "demo0.csv: 6 NaN")
    (row,) = jsonl(runner.invoke(app, ["nir", "predict", "--model", str(plsda[1]), demo[1], "--format", "jsonl"]))
    # a real scan against a model of synthetic spectra: no class, the gate says so
    assert row["label"] == "unknown" and row["outlier"] and row["q"] > row["q_limit"]


def test_the_installed_command_exits_2_with_one_line(plsda: tuple[PLSModel, Path], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s4edge", "nir", "predict", "--model", str(plsda[1]), str(tmp_path / "gone.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"error: {tmp_path / 'gone.csv'}: no such file"
