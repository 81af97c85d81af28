"""A simulated detector contact: ``drivers.digital_input.DigitalInput`` whose level a
test or a scenario sets, with optional contact bounce."""

from __future__ import annotations

from collections import deque


class SimPin:
    def __init__(self, active: bool = False) -> None:
        self.active = active
        self._bounce: deque[bool] = deque()
        self.reads = 0

    def set(self, active: bool) -> None:
        self.active = active

    def bounce(self, levels: list[bool]) -> None:
        """The next reads return ``levels`` before the steady level (a chattering relay)."""
        self._bounce.extend(levels)

    def read(self) -> bool:
        self.reads += 1
        return self._bounce.popleft() if self._bounce else self.active
