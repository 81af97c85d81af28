"""Reading the CSV exports of InnoSpectra NIR scanners (NIR-S-G1, NIR-F320...).

An export starts with a header block of ``Key:,value`` cells in two side-by-side
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
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NIRFileError(f"{path}: cannot read ({exc})") from None
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
