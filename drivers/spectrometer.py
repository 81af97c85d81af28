"""The spectrometer protocol: ``acquire()`` returns one :class:`Spectrum`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Spectrum:
    wavelengths_nm: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.wavelengths_nm.shape != self.values.shape or self.values.ndim != 1:
            raise ValueError(
                f"a spectrum needs equal 1-D wavelength and value arrays, got {self.wavelengths_nm.shape} "
                f"and {self.values.shape}"
            )


class Spectrometer(Protocol):
    def acquire(self) -> Spectrum: ...
