"""Reading spectra from files: the CSV exports of InnoSpectra NIR scanners (NIR-S-G1,
NIR-F320...), one spectrum per file, and matrices of spectra, one per row (``.mat``,
``.npz``, or a CSV whose header names the wavelengths), for batch prediction and
evaluation (``read_spectra``).

An InnoSpectra export starts with a header block of ``Key:,value`` cells in two side-by-side
sections (scan config / reference scan, general information / calibration), then a
``***Scan Data***`` line, a column header and one row per wavelength:
``Wavelength (nm), Absorbance (AU), Reference Signal (unitless), Sample Signal (unitless)``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from s4edge.drivers.spectrometer import Spectrum

SCAN_DATA_MARK = "***Scan Data***"


class NIRFileError(ValueError):
    """A file that is not a usable InnoSpectra export; says which line and why."""


@dataclass(frozen=True)
class InnoSpectraScan:
    header: dict[str, str]
    wavelengths_nm: npt.NDArray[np.float64]
    absorbance: npt.NDArray[np.float64]
    reference_signal: npt.NDArray[np.float64]
    sample_signal: npt.NDArray[np.float64]

    def spectrum(self) -> Spectrum:
        return Spectrum(self.wavelengths_nm, self.absorbance, dict(self.header))


def _header_pairs(row: list[str]) -> dict[str, str]:
    """``Key:`` cells followed by their value, anywhere in the row (both sections)."""
    pairs: dict[str, str] = {}
    for i, cell in enumerate(row[:-1]):
        key = cell.strip()
        if key.endswith(":") and row[i + 1].strip():
            pairs.setdefault(key[:-1], row[i + 1].strip())
    return pairs


def read_innospectra(path: Path) -> InnoSpectraScan:
    return _parse_innospectra(path, _read_text(path))


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NIRFileError(f"{path}: cannot read ({exc})") from None


def _parse_innospectra(path: Path, text: str) -> InnoSpectraScan:
    rows = list(csv.reader(text.splitlines()))
    header: dict[str, str] = {}
    start = None
    for n, row in enumerate(rows):
        if row and row[0].strip() == SCAN_DATA_MARK:
            start = n + 2  # the column header follows the mark
            break
        for key, value in _header_pairs(row).items():
            header.setdefault(key, value)
    if start is None:
        raise NIRFileError(f"{path}: no '{SCAN_DATA_MARK}' line; is this an InnoSpectra CSV export?")
    columns = [c.strip() for c in rows[start - 1]] if start - 1 < len(rows) else []
    if not columns or not columns[0].startswith("Wavelength"):
        raise NIRFileError(f"{path}: line {start}: expected the 'Wavelength (nm)' column header, got {columns[:2]}")
    data = []
    for n, row in enumerate(rows[start:], start=start + 1):
        cells = [c for c in row if c.strip()]
        if not cells:
            continue
        try:
            data.append([float(c) for c in cells[:4]])
        except ValueError:
            raise NIRFileError(f"{path}: line {n}: not a number in {cells[:4]}") from None
        if len(data[-1]) != 4:
            raise NIRFileError(f"{path}: line {n}: expected 4 columns, got {len(data[-1])}")
    if not data:
        raise NIRFileError(f"{path}: the scan data section is empty")
    table = np.asarray(data, dtype=np.float64)
    return InnoSpectraScan(header, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(), table[:, 3].copy())


# --- matrices of spectra ---------------------------------------------------------------

WAVELENGTH_KEYS = ("wavelengths_nm", "wavelengths", "wavelength", "wv", "wl")


@dataclass(frozen=True)
class SpectraTable:
    """Spectra from one file, one per row, with what the file says about them."""

    source: str
    spectra: npt.NDArray[np.float64]  # (n, points)
    wavelengths_nm: npt.NDArray[np.float64] | None  # None: the file gives no grid
    names: list[str]  # one per spectrum, for reports: "file:sample" or "file[row]"
    reference: npt.NDArray[np.float64] | None = None  # (n, targets) when a y key/column was asked for
    device_grid: bool = False  # an instrument export or scan: the grid is its own pixel calibration


def read_spectra(path: Path, x_key: str | None = None, y_key: str | None = None) -> SpectraTable:
    """Spectra from a ``.mat`` or ``.npz`` (arrays chosen by key), a CSV matrix (header of
    wavelengths, one spectrum per row), or an InnoSpectra CSV export (one spectrum)."""
    path = Path(path)
    if not path.is_file():
        raise NIRFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".mat", ".npz"):
        arrays = _read_mat(path) if suffix == ".mat" else _read_npz(path)
        return _from_arrays(path, arrays, x_key, y_key)
    if suffix != ".csv":
        raise NIRFileError(f"{path}: unknown kind of file; give a .mat, .npz or .csv")
    text = _read_text(path)
    if SCAN_DATA_MARK in text:
        if x_key is not None or y_key is not None:
            raise NIRFileError(f"{path}: an InnoSpectra export holds one spectrum and no keys; drop --x-key/--y-key")
        scan = _parse_innospectra(path, text)
        return SpectraTable(str(path), scan.absorbance[None, :], scan.wavelengths_nm, [str(path)], device_grid=True)
    if x_key is not None:
        raise NIRFileError(
            f"{path}: --x-key is for .mat/.npz files; a CSV matrix has its spectra in the wavelength columns"
        )
    return _read_csv_matrix(path, text, y_key)


def _read_mat(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:
        raise NIRFileError(
            f"{path}: a MATLAB v7.3 (HDF5) file; save it with -v7 or export the arrays to .npz"
        ) from None
    except Exception as exc:  # scipy raises OSError, ValueError, MatReadError, struct.error... for a bad file
        raise NIRFileError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    return {k: np.asarray(v) for k, v in mat.items() if not k.startswith("__")}


def _read_npz(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickle a data file
            return {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as exc:  # OSError, ValueError (object arrays), zipfile.BadZipFile...
        raise NIRFileError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _keys(arrays: dict[str, npt.NDArray[np.generic]]) -> str:
    return ", ".join(f"{k} ({'×'.join(map(str, v.shape))})" for k, v in arrays.items()) or "none"


def _numeric(path: Path, key: str, value: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    if value.dtype.kind not in "biuf":
        raise NIRFileError(f"{path}: {key} holds {value.dtype} values, not numbers")
    return np.asarray(value, dtype=np.float64)


def _from_arrays(
    path: Path, arrays: dict[str, npt.NDArray[np.generic]], x_key: str | None, y_key: str | None
) -> SpectraTable:
    if x_key is None:
        candidates = [
            k for k, v in arrays.items() if v.ndim == 2 and min(v.shape) > 1 and k not in WAVELENGTH_KEYS and k != y_key
        ]
        if len(candidates) != 1:
            raise NIRFileError(f"{path}: which array holds the spectra? give --x-key (arrays: {_keys(arrays)})")
        x_key = candidates[0]
    for key, flag in ((x_key, "--x-key"), (y_key, "--y-key")):
        if key is not None and key not in arrays:
            raise NIRFileError(f"{path}: no array {key!r} ({flag}); the file holds: {_keys(arrays)}")
    x = _numeric(path, x_key, arrays[x_key])
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 2:
        raise NIRFileError(f"{path}: {x_key} is {'×'.join(map(str, x.shape))}; spectra must be samples × wavelengths")
    wl = next((arrays[k] for k in WAVELENGTH_KEYS if k in arrays and arrays[k].size == x.shape[1]), None)
    reference = None
    if y_key is not None:
        y = _numeric(path, y_key, arrays[y_key])
        if y.ndim == 2 and y.shape[0] != len(x) and y.shape[1] == len(x):
            y = y.T  # a row vector saved from MATLAB
        if y.shape[0] != len(x) or y.ndim > 2:
            raise NIRFileError(f"{path}: {y_key} is {'×'.join(map(str, y.shape))} but {x_key} has {len(x)} spectra")
        reference = y.reshape(len(x), -1)
    wavelengths = None if wl is None else _numeric(path, "wavelengths", wl).ravel()
    names = [f"{path}:{x_key}[{i}]" for i in range(len(x))]
    return SpectraTable(str(path), x, wavelengths, names, reference)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv_matrix(path: Path, text: str, y_key: str | None) -> SpectraTable:
    """A header row whose numeric cells are wavelengths (nm); other columns are sample
    names or reference values (``y_key``). Empty or "NaN" cells become NaN."""
    rows = [row for row in csv.reader(text.splitlines()) if any(c.strip() for c in row)]
    if len(rows) < 2:
        raise NIRFileError(f"{path}: expected a header of wavelengths and one spectrum per row")
    header = [c.strip() for c in rows[0]]
    grid = [(i, _number(c)) for i, c in enumerate(header)]
    spectral = [i for i, w in grid if w is not None]
    labels = {c: i for i, c in enumerate(header) if _number(c) is None}
    if len(spectral) < 2:
        raise NIRFileError(
            f"{path}: line 1: expected wavelengths in the header (e.g. 1600,1604,...), got {header[:3]}; "
            "an InnoSpectra export needs its '***Scan Data***' line"
        )
    if y_key is not None and y_key not in labels:
        raise NIRFileError(f"{path}: no column {y_key!r} (--y-key); the non-wavelength columns are {sorted(labels)}")
    name_col = next((i for c, i in labels.items() if c != y_key), None)
    x = np.empty((len(rows) - 1, len(spectral)))
    y = np.empty(len(rows) - 1)
    names = []
    for n, row in enumerate(rows[1:]):
        line = n + 2
        if len(row) != len(header):
            raise NIRFileError(f"{path}: line {line}: {len(row)} cells, the header has {len(header)}")
        for j, i in enumerate(spectral):
            cell = row[i].strip()
            value = np.nan if cell == "" else _number(cell)
            if value is None:
                raise NIRFileError(f"{path}: line {line}, column {header[i]}: not a number: {cell!r}")
            x[n, j] = value
        if y_key is not None:
            value = _number(row[labels[y_key]].strip())
            if value is None:
                raise NIRFileError(f"{path}: line {line}, column {y_key}: not a number: {row[labels[y_key]]!r}")
            y[n] = value
        names.append(f"{path}:{row[name_col].strip()}" if name_col is not None else f"{path}[{n}]")
    wavelengths = np.array([w for _, w in grid if w is not None], dtype=np.float64)
    return SpectraTable(str(path), x, wavelengths, names, None if y_key is None else y[:, None])


def on_model_grid(table: SpectraTable, grid_nm: npt.NDArray[np.float64], resample: bool) -> npt.NDArray[np.float64]:
    """``table``'s spectra on the model's wavelength grid. The same grid (within 0.5 nm)
    passes; another grid that covers the model's range is interpolated for an InnoSpectra
    export (each device has its own pixel-to-wavelength calibration) or with ``resample``;
    anything else is an error saying what differs."""
    x, wl = table.spectra, table.wavelengths_nm
    if wl is None:
        if x.shape[1] != len(grid_nm):
            raise NIRFileError(
                f"{table.source}: {x.shape[1]} points per spectrum and no wavelengths; the model expects "
                f"{len(grid_nm)} points ({grid_nm[0]:g}–{grid_nm[-1]:g} nm)"
            )
        return x
    if len(wl) == len(grid_nm) and np.allclose(wl, grid_nm, atol=0.5):
        return x
    if len(wl) < 2:
        raise NIRFileError(f"{table.source}: {len(wl)} wavelengths; the model expects {len(grid_nm)} points")
    described = f"{wl.min():g}–{wl.max():g} nm, {len(wl)} points"
    wanted = f"{grid_nm[0]:g}–{grid_nm[-1]:g} nm, {len(grid_nm)} points"
    covers = wl.min() <= grid_nm[0] + 1 and wl.max() >= grid_nm[-1] - 1
    if not covers or not (resample or table.device_grid):
        hint = "the spectra do not cover the model's range" if not covers else "pass --resample to interpolate"
        raise NIRFileError(f"{table.source}: wavelength grid {described} differs from the model's {wanted}: {hint}")
    order = np.argsort(wl)
    from scipy.interpolate import interp1d

    return np.asarray(interp1d(wl[order], x[:, order], axis=1, bounds_error=False,
                               fill_value=(x[:, order[0]], x[:, order[-1]]))(grid_nm), dtype=np.float64)  # fmt: skip
