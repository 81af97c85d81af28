"""``s4edge nir train`` and ``s4edge nir predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

nir_app = typer.Typer(help="NIR spectroscopy: train and run PLS / PLS-DA models.", no_args_is_help=True)
console = Console()


def _fail(message: str) -> typer.Exit:
    # unwrapped and unstyled inside: a path or a hint must survive a narrow terminal and a grep
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


def _training_data(data: Path | None, sim: bool, x_key: str, y_key: str) -> tuple[Any, Any, Any, str]:
    """(spectra, y or labels, wavelengths, kind) from a .mat file, a folder of class
    folders of InnoSpectra CSV exports, or the synthetic library (--sim)."""
    import numpy as np

    from s4edge.edge.sensing.nir_io import NIRFileError, read_innospectra
    from s4edge.edge.sensing.nir_synthetic import synthetic_library

    if sim:
        x, labels, wl = synthetic_library(per_class=20)
        return x, labels, wl, "classification"
    if data is None:
        raise _fail("give --data (a .mat file or a folder of class folders of CSV exports) or --sim")
    if data.suffix == ".mat":
        import scipy.io

        try:
            mat = scipy.io.loadmat(data)
            x, y = np.asarray(mat[x_key], dtype=float), np.asarray(mat[y_key], dtype=float)
        except KeyError as exc:
            keys = ", ".join(name for name, _, _ in scipy.io.whosmat(data))
            raise _fail(f"{data}: no key {exc} (keys: {keys}); choose them with --x-key/--y-key") from None
        except (OSError, ValueError) as exc:
            raise _fail(f"{data}: not a readable .mat file ({exc})") from None
        wl = np.asarray(mat["wv"], dtype=float).ravel() if "wv" in mat else np.arange(x.shape[1], dtype=float)
        return x, y, wl, "regression"
    if not data.is_dir():
        raise _fail(f"{data}: not a .mat file or a folder")
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


@nir_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="Model file to write (.json, with an .npz beside it)."),
    data: Path | None = typer.Option(None, "--data", help=".mat file, or a folder with one folder per class."),
    sim: bool = typer.Option(False, "--sim", help="Train on the synthetic precursor library."),
    name: str = typer.Option("nir-model", help="Model name reported in alerts."),
    x_key: str = typer.Option("Xcal1", help=".mat key of the spectra."),
    y_key: str = typer.Option("ycal", help=".mat key of the reference values."),
    snv: bool = typer.Option(True, help="Standard normal variate."),
    sg_window: int = typer.Option(15, help="Savitzky-Golay window (odd; 0 = off)."),
    sg_deriv: int = typer.Option(1, help="Savitzky-Golay derivative order."),
    max_components: int = typer.Option(12, min=1),
) -> None:
    """Train PLS (regression) or PLS-DA (classes), latent variables by cross-validation."""
    from s4edge.edge.sensing.chemometrics import Preprocess, SpectrumError, fit
    from s4edge.edge.sensing.nir_model import save_model

    x, y, wl, kind = _training_data(data, sim, x_key, y_key)
    try:
        model = fit(x, y, wl, kind=kind, preprocess=Preprocess(snv, sg_window, 2, sg_deriv),  # type: ignore[arg-type]
                    max_components=max_components)  # fmt: skip
    except (SpectrumError, ValueError) as exc:
        raise _fail(str(exc)) from None
    digest = save_model(model, out, name=name)
    console.print(
        json.dumps({"model": str(out.with_suffix(".json")), "kind": kind, "n_components": model.n_components,
                    "rmsecv": round(min(model.rmsecv), 5), "targets": model.targets, "sha256": digest})
    )  # fmt: skip


@nir_app.command("predict")
def predict(
    model_path: Path = typer.Option(..., "--model", help="Model .json from `s4edge nir train`."),
    csv: list[Path] = typer.Option([], "--csv", help="InnoSpectra CSV exports to classify."),
    url: str | None = typer.Option(None, "--url", help="Acquire one spectrum from this spectrometer URL."),
    sim: str | None = typer.Option(None, "--sim", help="Acquire from a simulated spectrometer showing this class."),
) -> None:
    """Predict from CSV exports, a spectrometer, or a simulated one."""
    import numpy as np

    from s4edge.drivers.errors import SpectrometerError
    from s4edge.drivers.nir_serial import SerialSpectrometer
    from s4edge.drivers.sim import SimSpectrometer, SpectrometerServer
    from s4edge.edge.sensing.chemometrics import SpectrumError
    from s4edge.edge.sensing.nir_io import NIRFileError, read_innospectra
    from s4edge.edge.sensing.nir_model import ModelFileError, load_model
    from s4edge.edge.sensing.nir_source import align
    from s4edge.edge.sensing.nir_synthetic import BANDS, synthetic_spectrum

    try:
        model, meta = load_model(model_path)
    except ModelFileError as exc:
        raise _fail(str(exc)) from None
    spectra = []
    try:
        spectra += [(str(p), read_innospectra(p).spectrum()) for p in csv]
        if url:
            device = SerialSpectrometer(url)
            spectra.append((url, device.acquire()))
            device.close()
        if sim:
            if sim not in BANDS:
                raise _fail(f"--sim takes one of {sorted(BANDS)}")
            rng = np.random.default_rng()
            with SpectrometerServer(SimSpectrometer(lambda: synthetic_spectrum(sim, rng))) as server:
                device = SerialSpectrometer(server.url)
                spectra.append((server.url, device.acquire()))
                device.close()
    except (NIRFileError, SpectrometerError) as exc:
        raise _fail(str(exc)) from None
    if not spectra:
        raise _fail("nothing to predict: give --csv, --url or --sim")
    rows: list[tuple[str, str, str, str, str]] = []
    for origin, spectrum in spectra:
        try:
            p = model.predict(align(spectrum, model))[0]
        except SpectrumError as exc:
            rows.append((origin, f"[red]{escape(str(exc))}[/red]", "", "", ""))
            continue
        shown = p.label if p.label is not None else ", ".join(f"{v:.4g}" for v in p.values)
        rows.append((origin, shown, f"{p.confidence:.2f}", f"{p.t2 / p.t2_limit:.2f}", f"{p.q / p.q_limit:.2f}"))
    table = Table(title=f"{meta['name']} ({meta['kind']}, {model.n_components} LV)")
    # A narrow terminal folds a long spectrum path; it never cuts the prediction short.
    table.add_column("spectrum", overflow="fold")
    table.add_column("prediction", overflow="fold", min_width=min(40, max(len(r[1]) for r in rows)))
    for col in ("confidence", "T²/limit", "Q/limit"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
