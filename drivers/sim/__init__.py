"""Register- and wire-level simulators of the chips in ``drivers``, shipped as
importable fixtures (gpiozero's mocks were not, and its users asked for them).

    bus = SimBus()
    adc = SimADS1115()
    bus.attach(0x48, adc)
    adc.set_voltage(2, 1.65)
    ADS1115(bus).read_voltage(2)  # ≈ 1.65
"""

from s4edge.drivers.sim.ads1115 import SimADS1115
from s4edge.drivers.sim.bme280 import SimBME280
from s4edge.drivers.sim.bus import SimBus, SimDevice
from s4edge.drivers.sim.pin import SimPin
from s4edge.drivers.sim.sensirion import SimSCD4x, SimSGP30
from s4edge.drivers.sim.spectrometer import SimSpectrometer, SpectrometerServer

__all__ = [
    "SimADS1115",
    "SimBME280",
    "SimBus",
    "SimDevice",
    "SimPin",
    "SimSCD4x",
    "SimSGP30",
    "SimSpectrometer",
    "SpectrometerServer",
]
