"""InnoSpectra CSV exports (header block and scan data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s4edge.edge.sensing.nir_io import NIRFileError, read_innospectra


@pytest.fixture
def exports() -> list[Path]:
    folder = Path(__file__).resolve().parents[2].parent / "shared/data/nir/innospectra"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the InnoSpectra exports live in ../shared")
    return sorted(folder.glob("*.csv"))


def test_reads_header_and_scan(exports: list[Path]) -> None:
    assert exports
    for path in exports:
        scan = read_innospectra(path)
        assert scan.header["Model Name"] == "NIR-F320"
        assert scan.header["Start Wavelength (nm)"] == "1600"
        assert "Data Date-Time" in scan.header
        assert len(scan.wavelengths_nm) == 228
        assert 1600 <= scan.wavelengths_nm[0] < scan.wavelengths_nm[-1] <= 2401
        assert np.all(np.diff(scan.wavelengths_nm) > 0)
        # absorbance = −log10(sample / reference) for the first row, as the scanner computes it
        expected = -np.log10(scan.sample_signal[0] / scan.reference_signal[0])
        assert scan.absorbance[0] == pytest.approx(expected, abs=1e-3)
        assert scan.spectrum().values.shape == (228,)


def test_not_an_export_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(NIRFileError, match="Scan Data"):
        read_innospectra(bad)
    bad.write_text("***Scan Data***\nWavelength (nm),Absorbance (AU),Reference Signal,Sample Signal\n1600,x,1,1\n")
    with pytest.raises(NIRFileError, match="line 3: not a number"):
        read_innospectra(bad)
    with pytest.raises(NIRFileError, match="cannot read"):
        read_innospectra(tmp_path / "missing.csv")
