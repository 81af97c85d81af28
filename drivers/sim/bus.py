"""A simulated I2C bus: devices by address, and the faults a real bus has.

Like gpiozero's ``MockFactory``/``MockSPIDevice``, the simulator is the chip on the
far side of the wire: drivers talk to it through the same ``I2CBus`` calls they use
on ``/dev/i2c-1``. Failures are raised as the kernel raises them (``OSError`` with
``EREMOTEIO`` for a NACK, ``ENXIO`` for nobody at the address).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Protocol


class SimDevice(Protocol):
    """The chip side of a transaction. Register chips implement the SMBus calls, command
    chips (Sensirion) ``write``/``read``; a call a chip does not support NACKs."""

    def read_register(self, reg: int, length: int) -> list[int]: ...

    def write_register(self, reg: int, data: Sequence[int]) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, n: int) -> bytes: ...


def nack(addr: int) -> OSError:
    return OSError(errno.EREMOTEIO, f"{os.strerror(errno.EREMOTEIO)} (NACK from 0x{addr:02x})")


class SimBus:
    """Implements ``drivers.i2c.I2CBus``. Fault injection:

    - :meth:`disconnect` / :meth:`reconnect`: the device stops answering (ENXIO);
    - :meth:`fail_next`: the next ``n`` transactions to an address are NACKed.
    """

    def __init__(self) -> None:
        self.devices: dict[int, SimDevice] = {}
        self._disconnected: set[int] = set()
        self._failures: dict[int, int] = {}
        self.transactions = 0

    def attach(self, addr: int, device: SimDevice) -> None:
        if addr in self.devices:
            raise ValueError(f"address 0x{addr:02x} already has a device")
        self.devices[addr] = device

    def disconnect(self, addr: int) -> None:
        self._disconnected.add(addr)

    def reconnect(self, addr: int) -> None:
        self._disconnected.discard(addr)

    def fail_next(self, addr: int, n: int = 1) -> None:
        self._failures[addr] = self._failures.get(addr, 0) + n

    def _device(self, addr: int) -> SimDevice:
        self.transactions += 1
        if addr not in self.devices or addr in self._disconnected:
            raise OSError(errno.ENXIO, f"{os.strerror(errno.ENXIO)} (no device at 0x{addr:02x})")
        if self._failures.get(addr, 0) > 0:
            self._failures[addr] -= 1
            raise nack(addr)
        return self.devices[addr]

    def read_byte_data(self, addr: int, reg: int) -> int:
        return self._device(addr).read_register(reg, 1)[0]

    def write_byte_data(self, addr: int, reg: int, value: int) -> None:
        self._device(addr).write_register(reg, [value & 0xFF])

    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]:
        return self._device(addr).read_register(reg, length)

    def write_i2c_block_data(self, addr: int, reg: int, data: Sequence[int]) -> None:
        self._device(addr).write_register(reg, list(data))

    def write(self, addr: int, data: bytes) -> None:
        device = self._device(addr)
        if data:  # a zero-length write is an address probe (SMBus quick command): ACK only
            device.write(bytes(data))

    def read(self, addr: int, n: int) -> bytes:
        return self._device(addr).read(n)
