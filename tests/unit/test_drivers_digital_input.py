"""Detector contacts: gpiozero's MockFactory handed in (never its global default), and
the simulated pin with contact bounce."""

from __future__ import annotations

import pytest

from s4edge.drivers.digital_input import GpioInput
from s4edge.drivers.sim import SimPin


def test_active_low_relay_with_pull_up() -> None:
    mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero is the optional 'gpio' extra")
    factory = mock.MockFactory()
    contact = GpioInput(17, pin_factory=factory)
    assert contact.read() is False  # pulled up: idle
    factory.pin(17).drive_low()  # the detector's relay closes to ground in alarm
    assert contact.read() is True
    contact.close()


def test_active_high_output() -> None:
    mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero is the optional 'gpio' extra")
    factory = mock.MockFactory()
    contact = GpioInput(18, active_high=True, pin_factory=factory)
    assert contact.read() is False
    factory.pin(18).drive_high()
    assert contact.read() is True


def test_sim_pin_bounces_then_settles() -> None:
    pin = SimPin()
    pin.set(True)
    pin.bounce([False, True, False])
    assert [pin.read() for _ in range(5)] == [False, True, False, True, True]
    assert pin.reads == 5
