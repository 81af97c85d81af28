"""``s4edge nir train``, ``s4edge nir predict`` and ``s4edge nir eval`` (docs/nir.md).

Results go to stdout (a table, or JSON for scripts); an error is one line on stderr and
exit status 2, never a row of the results.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from s4edge.edge.sensing.chemometrics import PLSModel, Predictions
    from s4edge.edge.sensing.nir_io import SpectraTable

nir_app = typer.Typer(help="NIR spectroscopy: train, run and evaluate PLS / PLS-DA models.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


class PredictFormat(StrEnum):
    table = "table"
    jsonl = "jsonl"


class EvalFormat(StrEnum):
    table = "table"
    json = "json"


def _fail(message: str) -> typer.Exit:
    # one unwrapped line: a path or a hint must survive a narrow terminal and a grep
    errors.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


def _training_data(
    data: Path | None, sim: bool, x_key: str, y_key: str
) -> tuple[Any, Any, Any, str]:  # fmt: skip
    """(spectra, y or labels, wavelengths, kind) from a .mat/.npz file, a folder of class
    folders of InnoSpectra CSV exports, or the synthetic library (--sim)."""
    import numpy as np

    from s4edge.edge.sensing.nir_io import NIRFileError, read_innospectra, read_spectra
    from s4edge.edge.sensing.nir_synthetic import synthetic_library

    if sim:
        x, labels, wl = synthetic_library(per_class=20)
        return x, labels, wl, "classification"
    if data is None:
        raise _fail("give --data (a .mat/.npz file or a folder of class folders of CSV exports) or --sim")
    if data.suffix.lower() in (".mat", ".npz"):
        try:
            table = read_spectra(data, x_key, y_key)
        except NIRFileError as exc:
            raise _fail(f"{exc}; choose them with --x-key/--y-key") from None
        wl = (
            table.wavelengths_nm if table.wavelengths_nm is not None else np.arange(table.spectra.shape[1], dtype=float)
        )
        return table.spectra, table.reference, wl, "regression"
    if not data.is_dir():
        raise _fail(f"{data}: not a .mat/.npz file or a folder")
    spectra: list[Any] = []
    classes: list[str] = []
    grid = None
    for csv in sorted(data.glob("*/*.csv")):
        try:
            scan = read_innospectra(csv)
        except NIRFileError as exc:
            raise _fail(str(exc)) from None
        grid = scan.wavelengths_nm if grid is None else grid
        spectra.append(np.interp(grid, scan.wavelengths_nm, scan.absorbance))
        classes.append(csv.parent.name)
    if len(set(classes)) < 2:
        raise _fail(f"{data}: needs one sub-folder of CSV exports per class, at least two classes")
    return np.vstack(spectra), np.array(classes), grid, "classification"


def _gate(model: PLSModel) -> dict[str, Any]:
    """The outlier gate's limits and how they were calibrated, for reports."""
    out: dict[str, Any] = {"t2_limit": model.t2_limit, "q_limit": model.q_limit}
    g = model.gate
    if g is None:
        return {"method": "uncalibrated", **out, "note": "model file predates the cross-validated gate; train it again"}
    return {
        "method": g.method, "alpha": g.alpha, **out, "cv_folds": g.folds,
        "cv_rejection_rate": round(g.cv_rejection_rate, 4), "cv_t2_rate": round(g.cv_t2_rate, 4),
        "cv_q_rate": round(g.cv_q_rate, 4), "expected_rejection_rate": round(g.expected_rejection_rate, 4),
    }  # fmt: skip


@nir_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="Model file to write (.json, with an .npz beside it)."),
    data: Path | None = typer.Option(
        None, "--data", help=".mat/.npz file, or a folder with one folder per class (default: none; give it or --sim)."
    ),
    sim: bool = typer.Option(False, "--sim", help="Train on the synthetic precursor library."),
    name: str = typer.Option("nir-model", help="Model name reported in alerts."),
    x_key: str = typer.Option("Xcal1", help=".mat/.npz key of the spectra."),
    y_key: str = typer.Option("ycal", help=".mat/.npz key of the reference values."),
    snv: bool = typer.Option(True, help="Standard normal variate."),
    sg_window: int = typer.Option(15, help="Savitzky-Golay window in spectral points (odd; 0 = off)."),
    sg_deriv: int = typer.Option(1, help="Savitzky-Golay derivative order."),
    max_components: int = typer.Option(
        12, min=1, help="Most PLS latent variables cross-validation may choose (count)."
    ),
    alpha: float = typer.Option(0.01, help="Outlier gate: upper-tail probability of the T² and of the Q limit."),
) -> None:
    """Train PLS (regression) or PLS-DA (classes), latent variables and the outlier gate by cross-validation."""
    from s4edge.edge.sensing.chemometrics import Preprocess, SpectrumError, fit
    from s4edge.edge.sensing.nir_model import save_model

    x, y, wl, kind = _training_data(data, sim, x_key, y_key)
    try:
        model = fit(x, y, wl, kind=kind, preprocess=Preprocess(snv, sg_window, 2, sg_deriv),  # type: ignore[arg-type]
                    max_components=max_components, alpha=alpha)  # fmt: skip
    except (SpectrumError, ValueError) as exc:
        raise _fail(str(exc)) from None
    digest = save_model(model, out, name=name)
    typer.echo(
        json.dumps({"model": str(out.with_suffix(".json")), "kind": kind, "n_components": model.n_components,
                    "n_train": model.n_train, "rmsecv": round(min(model.rmsecv), 5), "targets": model.targets,
                    "gate": _gate(model), "sha256": digest})
    )  # fmt: skip


def _load(model_path: Path) -> tuple[PLSModel, dict[str, Any]]:
    from s4edge.edge.sensing.nir_model import ModelFileError, load_model

    try:
        return load_model(model_path)
    except ModelFileError as exc:
        raise _fail(str(exc)) from None


def _on_grid(tables: list[SpectraTable], model: PLSModel, resample: bool) -> tuple[Any, list[str]]:
    """All spectra as one matrix on the model's grid, and their names; a bad file or row
    stops everything with an error naming it."""
    import numpy as np

    from s4edge.edge.sensing.nir_io import NIRFileError, on_model_grid

    blocks, names = [], []
    for table in tables:
        bad = ~np.isfinite(table.spectra)
        if bad.any():  # checked as the file has them, before interpolation spreads a NaN to its neighbours
            rows = sorted({int(r) for r in np.nonzero(bad)[0]})
            shown = ", ".join(table.names[r] for r in rows[:3]) + (
                f" and {len(rows) - 3} more" if len(rows) > 3 else ""
            )
            raise _fail(f"{shown}: {int(bad.sum())} NaN or infinite points; fix or drop the spectra")
        try:
            blocks.append(on_model_grid(table, model.wavelengths_nm, resample))
        except NIRFileError as exc:
            raise _fail(str(exc)) from None
        names += table.names
    return np.vstack(blocks), names


def _acquired(url: str | None, sim: str | None) -> list[SpectraTable]:
    import numpy as np

    from s4edge.drivers.errors import SpectrometerError
    from s4edge.drivers.nir_serial import SerialSpectrometer
    from s4edge.drivers.sim import SimSpectrometer, SpectrometerServer
    from s4edge.edge.sensing.nir_io import SpectraTable
    from s4edge.edge.sensing.nir_synthetic import BANDS, synthetic_spectrum

    found = []
    try:
        if url:
            device = SerialSpectrometer(url)
            found.append((url, device.acquire()))
            device.close()
        if sim:
            if sim not in BANDS:
                raise _fail(f"--sim takes one of {sorted(BANDS)}")
            rng = np.random.default_rng()
            with SpectrometerServer(SimSpectrometer(lambda: synthetic_spectrum(sim, rng))) as server:
                device = SerialSpectrometer(server.url)
                found.append((server.url, device.acquire()))
                device.close()
    except SpectrometerError as exc:
        raise _fail(str(exc)) from None
    return [SpectraTable(o, s.values[None, :], s.wavelengths_nm, [o], device_grid=True) for o, s in found]


def _prediction_rows(model: PLSModel, batch: Predictions, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    outlier = batch.outlier
    for i, name in enumerate(names):
        row: dict[str, Any] = {"spectrum": name}
        if batch.labels is not None:
            row["label"] = batch.labels[i]
            row["scores"] = dict(zip(model.targets, batch.values[i].tolist(), strict=True))
        else:
            row["values"] = dict(zip(model.targets, batch.values[i].tolist(), strict=True))
        row.update(confidence=float(batch.confidence[i]), outlier=bool(outlier[i]), t2=float(batch.t2[i]),
                   t2_limit=batch.t2_limit, q=float(batch.q[i]), q_limit=batch.q_limit)  # fmt: skip
        rows.append(row)
    return rows


@nir_app.command("predict")
def predict(
    model_path: Path = typer.Option(..., "--model", help="Model .json from `s4edge nir train`."),
    files: list[Path] = typer.Argument(
        None,
        help="Spectra: InnoSpectra CSV exports, CSV matrices (wavelength header, one spectrum per row), "
        ".mat or .npz files.",
        show_default=False,
    ),
    csv: list[Path] = typer.Option([], "--csv", help="InnoSpectra CSV exports (as FILES; kept for old scripts)."),
    x_key: str | None = typer.Option(
        None, "--x-key", help="Key of the spectra in each .mat/.npz given (default: the file's only matrix)."
    ),
    resample: bool = typer.Option(False, help="Interpolate a matrix whose wavelength grid differs from the model's."),
    url: str | None = typer.Option(
        None, "--url", help="Acquire one spectrum from this spectrometer URL (default: none, read FILES)."
    ),
    sim: str | None = typer.Option(
        None, "--sim", help="Acquire from a simulated spectrometer showing this class (default: none, read FILES)."
    ),
    fmt: PredictFormat = typer.Option(PredictFormat.table, "--format", help="table, or one JSON object per line."),
) -> None:
    """Predict a batch of spectra from files, a spectrometer, or a simulated one, in one pass."""
    from s4edge.edge.sensing.chemometrics import SpectrumError
    from s4edge.edge.sensing.nir_io import NIRFileError, read_spectra

    model, meta = _load(model_path)
    try:
        # --x-key names the spectra in every .mat/.npz given; CSV files carry no keys
        tables = [
            read_spectra(p, x_key if p.suffix.lower() in (".mat", ".npz") else None) for p in [*(files or []), *csv]
        ]
    except NIRFileError as exc:
        raise _fail(str(exc)) from None
    tables += _acquired(url, sim)
    if not tables:
        raise _fail("nothing to predict: give spectra files, --url or --sim")
    x, names = _on_grid(tables, model, resample)
    try:
        batch = model.predict_batch(x)
    except SpectrumError as exc:
        raise _fail(str(exc)) from None
    rows = _prediction_rows(model, batch, names)
    if fmt is PredictFormat.jsonl:
        sys.stdout.write("".join(json.dumps(row) + "\n" for row in rows))
        return
    table = Table(title=f"{meta['name']} ({meta['kind']}, {model.n_components} LV, gate {_gate(model)['method']})")
    # A narrow terminal folds a long spectrum path; it never cuts the prediction short.
    table.add_column("spectrum", overflow="fold")
    shown = [r["label"] if "label" in r else ", ".join(f"{v:.4g}" for v in r["values"].values()) for r in rows]
    table.add_column("prediction", overflow="fold", min_width=min(40, max(map(len, shown))))
    for col in ("confidence", "T²/limit", "Q/limit", "gate"):
        table.add_column(col)
    for row, text in zip(rows, shown, strict=True):
        table.add_row(
            escape(row["spectrum"]), escape(text), f"{row['confidence']:.2f}", f"{row['t2'] / row['t2_limit']:.2f}",
            f"{row['q'] / row['q_limit']:.2f}", "[red]outlier[/red]" if row["outlier"] else "pass",
        )  # fmt: skip
    console.print(table)


def regression_metrics(predicted: Any, reference: Any) -> dict[str, float | None]:
    """RMSEP, R² (1 − SS_res/SS_tot; None for a constant reference) and bias (mean of
    predicted − reference) for one target (ISO 12099:2017 §5 names RMSEP and bias)."""
    import numpy as np

    residual = np.asarray(predicted, dtype=float) - np.asarray(reference, dtype=float)
    spread = float(np.sum((reference - np.mean(reference)) ** 2))
    return {
        "rmsep": float(np.sqrt(np.mean(residual**2))),
        "r2": 1.0 - float(np.sum(residual**2)) / spread if spread > 0 else None,
        "bias": float(np.mean(residual)),
    }


@nir_app.command("eval")
def evaluate(
    model_path: Path = typer.Option(..., "--model", help="Regression model .json from `s4edge nir train`."),
    data: Path = typer.Option(..., "--data", help=".mat, .npz, or CSV matrix of test spectra with reference values."),
    x_key: str | None = typer.Option(None, "--x-key", help=".mat/.npz key of the spectra (default: the only matrix)."),
    y_key: str = typer.Option(..., "--y-key", help=".mat/.npz key, or CSV column, of the reference values."),
    resample: bool = typer.Option(False, help="Interpolate spectra whose wavelength grid differs from the model's."),
    fmt: EvalFormat = typer.Option(EvalFormat.table, "--format", help="table or json."),
) -> None:
    """RMSEP, R² and bias on a test set, and how many of its spectra the outlier gate rejects."""
    from s4edge.edge.sensing.chemometrics import SpectrumError
    from s4edge.edge.sensing.nir_io import NIRFileError, read_spectra

    model, meta = _load(model_path)
    if model.kind != "regression":
        raise _fail(f"{model_path}: a PLS-DA model (classes {model.targets}); nir eval scores regression models")
    try:
        table = read_spectra(data, x_key, y_key)
    except NIRFileError as exc:
        raise _fail(str(exc)) from None
    assert table.reference is not None  # y_key was given
    if table.reference.shape[1] != len(model.targets):
        raise _fail(f"{data}: {y_key} has {table.reference.shape[1]} columns; the model predicts {model.targets}")
    x, _ = _on_grid([table], model, resample)
    try:
        batch = model.predict_batch(x)
    except SpectrumError as exc:
        raise _fail(str(exc)) from None
    rejected = int(batch.outlier.sum())
    metrics = {t: regression_metrics(batch.values[:, j], table.reference[:, j]) for j, t in enumerate(model.targets)}
    gate = _gate(model)
    report = {"model": str(model_path), "data": str(data), "n": len(x), "targets": metrics,
              "rejected": rejected, "rejection_rate": rejected / len(x), "gate": gate}  # fmt: skip
    if fmt is EvalFormat.json:
        typer.echo(json.dumps(report))
        return
    out = Table(title=f"{meta['name']} on {data.name} (n = {len(x)})")
    for col in ("target", "RMSEP", "R²", "bias"):
        out.add_column(col)
    for target, m in metrics.items():
        r2 = "n/a" if m["r2"] is None else f"{m['r2']:.4f}"
        out.add_row(escape(target), f"{m['rmsep']:.4g}", r2, f"{m['bias']:+.4g}")
    console.print(out)
    expected = (
        f"expected ≈ {gate['expected_rejection_rate']:.1%} at α = {gate['alpha']:g} on each of T² and Q; "
        f"calibration set (cross-validated) {gate['cv_rejection_rate']:.1%}"
        if model.gate is not None
        else gate["note"]
    )
    console.print(
        f"outlier gate: {rejected} of {len(x)} rejected ({rejected / len(x):.1%}); {expected}", soft_wrap=True
    )
