"""Fixtures that ship with the package: real peers started on free ports, for tests,
benchmarks and drills: users of the package test against the same peers."""

from s4edge.testing.mosquitto import Mosquitto, free_port
from s4edge.testing.waiting import eventually

__all__ = ["Mosquitto", "eventually", "free_port"]
