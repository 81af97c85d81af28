"""The I2C bus protocol that every chip driver takes, and its smbus2 backend.

A driver never opens its bus: the composition root opens an
:class:`SMBus2Bus` (or hands in ``drivers.sim.SimBus``) and passes it to the chip.
Register access follows SMBus (``*_byte_data``, ``*_i2c_block_data``); chips that
speak plain I2C commands instead of registers (Sensirion) use ``write``/``read``.
Backends raise ``OSError`` as the kernel does; drivers turn it into ``I2CError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

# 7-bit addresses outside 0x08..0x77 are reserved (I2C-bus specification UM10204 §3.1.12).
FIRST_ADDRESS = 0x08
LAST_ADDRESS = 0x77


class I2CBus(Protocol):
    def read_byte_data(self, addr: int, reg: int) -> int: ...

    def write_byte_data(self, addr: int, reg: int, value: int) -> None: ...

    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]: ...

    def write_i2c_block_data(self, addr: int, reg: int, data: Sequence[int]) -> None: ...

    def write(self, addr: int, data: bytes) -> None:
        """One plain write transaction: START, address+W, data, STOP."""

    def read(self, addr: int, n: int) -> bytes:
        """One plain read transaction: START, address+R, n bytes, STOP."""


class SMBus2Bus:
    """A Linux ``/dev/i2c-N`` adapter through smbus2, imported only when opened.

    ``lazy``: opened at the first transfer, and tried again at the next one while it cannot
    be: a node whose adapter is missing or not yet permitted starts all the same, and its
    sensors report the fault (it stopped the whole node: no uplink, status or camera)."""

    def __init__(self, device: str | int, *, lazy: bool = False) -> None:
        self.device = device
        self._number = device if isinstance(device, int) else int(str(device).rsplit("-", 1)[-1])
        self._opened: Any = None
        self._lazy = lazy
        if not lazy:
            self._bus()

    def _bus(self) -> Any:
        if self._opened is None:
            # a hardware library: imported lazily (docs/architecture.md, "Import rules")
            from smbus2 import SMBus

            try:
                self._opened = SMBus(self._number)
            except OSError as exc:
                if not self._lazy:  # the caller says what to do (sensors scan, doctor)
                    raise
                hint = "is I2C enabled (raspi-config), and is the node's user in the i2c group?"
                raise OSError(exc.errno, f"cannot open {self.device}: {exc.strerror} ({hint})") from exc
        return self._opened

    def read_byte_data(self, addr: int, reg: int) -> int:
        return int(self._bus().read_byte_data(addr, reg))

    def write_byte_data(self, addr: int, reg: int, value: int) -> None:
        self._bus().write_byte_data(addr, reg, value)

    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]:
        return list(self._bus().read_i2c_block_data(addr, reg, length))

    def write_i2c_block_data(self, addr: int, reg: int, data: Sequence[int]) -> None:
        self._bus().write_i2c_block_data(addr, reg, list(data))

    def write(self, addr: int, data: bytes) -> None:
        from smbus2 import i2c_msg

        self._bus().i2c_rdwr(i2c_msg.write(addr, data))

    def read(self, addr: int, n: int) -> bytes:
        from smbus2 import i2c_msg

        msg = i2c_msg.read(addr, n)
        self._bus().i2c_rdwr(msg)
        return bytes(msg)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None


def scan(bus: I2CBus) -> list[int]:
    """Addresses that acknowledge a zero-length write (``i2cdetect``'s quick write)."""
    found = []
    for addr in range(FIRST_ADDRESS, LAST_ADDRESS + 1):
        try:
            bus.write(addr, b"")
        except OSError:
            continue
        found.append(addr)
    return found
