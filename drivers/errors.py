"""Typed driver failures. Every way a chip or a link can fail has its own class, so
that a caller can tell a bus fault from bad data and from a chip that is too slow."""

from __future__ import annotations


class DriverError(Exception):
    """Base class of every driver failure."""


class I2CError(DriverError):
    """A transaction failed on the bus (NACK, arbitration lost, device gone)."""

    def __init__(self, address: int, detail: str) -> None:
        super().__init__(f"I2C device 0x{address:02x}: {detail}")
        self.address = address
        self.detail = detail


class CRCError(DriverError):
    """A data word arrived with a checksum that does not match."""


class ConversionTimeout(DriverError):
    """The chip did not finish a conversion or measurement within its time limit."""


class WrongDevice(DriverError):
    """A chip answered at the address, but its identity register says it is another chip."""


class SpectrometerError(DriverError):
    """The spectrometer answered with an error, or with a frame we cannot use."""


class SpectrometerTimeout(SpectrometerError):
    """No complete spectrum frame arrived within the time limit."""
