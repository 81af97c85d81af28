"""Synthetic NIR spectra for drills, demos and tests: a smooth baseline on the
InnoSpectra NIR-F320 grid (1600–2400 nm) plus Gaussian absorption bands per class,
with scatter (multiplicative and additive) and detector noise.

These are *not* measured spectra of real substances. The band positions are rough
placements in the regions where N–H, O–H and C–H combination bands fall; a site needs
a model trained on its own reference measurements.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from s4edge.drivers.spectrometer import Spectrum

WAVELENGTHS_NM = np.linspace(1600.0, 2400.0, 228)
# class → (centre nm, width nm, depth AU) bands
BANDS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "ammonium_nitrate": ((1635.0, 25.0, 0.08), (2060.0, 40.0, 0.25), (2200.0, 35.0, 0.10)),
    "urea": ((1990.0, 30.0, 0.20), (2150.0, 35.0, 0.18)),
    "sugar": ((2080.0, 45.0, 0.15), (2270.0, 40.0, 0.12), (2320.0, 30.0, 0.08)),
}


def synthetic_spectrum(name: str, rng: np.random.Generator) -> Spectrum:
    wl = WAVELENGTHS_NM
    values = 0.8 + 0.25 * (wl - 1600.0) / 800.0
    for centre, width, depth in BANDS[name]:
        values = values + depth * rng.uniform(0.85, 1.15) * np.exp(-0.5 * ((wl - centre) / width) ** 2)
    values = values * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05) + rng.normal(0.0, 0.003, wl.shape)
    return Spectrum(wl.copy(), values, {"synthetic": name})


def synthetic_library(
    per_class: int, seed: int = 0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.str_], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    names = sorted(BANDS)
    spectra = [synthetic_spectrum(n, rng).values for n in names for _ in range(per_class)]
    labels = np.array([n for n in names for _ in range(per_class)])
    return np.vstack(spectra), labels, WAVELENGTHS_NM.copy()
