"""Fixtures that ship with the package: real peers started on free ports, for tests,
benchmarks and drills (STYLE.md, "Ship the fixtures")."""

from s4edge.testing.mosquitto import Mosquitto, free_port

__all__ = ["Mosquitto", "free_port"]
