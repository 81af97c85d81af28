"""Dry-contact detector inputs (smoke detector relay, flame detector output).

A :class:`DigitalInput` is anything with ``read() -> bool`` (True = detector in
alarm). :class:`GpioInput` reads a GPIO line through gpiozero, imported lazily; the
pin factory is handed in (gpiozero's ``MockFactory``, ``LGPIOFactory``...), never
taken from gpiozero's class-level default. ``drivers.sim.SimPin`` is the simulator.
A dry contact cannot tell "idle" from "wire cut"; use a supervised (end-of-line
resistor) input on an ADC channel where that matters.
"""

from __future__ import annotations

from typing import Any, Protocol


class DigitalInput(Protocol):
    def read(self) -> bool: ...


class GpioInput:
    def __init__(self, pin: int | str, *, active_high: bool = False, pin_factory: Any = None) -> None:
        # a hardware library: imported lazily (docs/architecture.md, "Import rules")
        from gpiozero import DigitalInputDevice

        # Detector relays usually pull the line low in alarm: active-low with the pull-up on.
        self._device: Any = DigitalInputDevice(pin, pull_up=not active_high, pin_factory=pin_factory)

    def read(self) -> bool:
        return bool(self._device.is_active)

    def close(self) -> None:
        self._device.close()
