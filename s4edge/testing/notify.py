"""What systemd listens on for sd_notify(3): a unix datagram socket, to point
``$NOTIFY_SOCKET`` at and read READY/WATCHDOG/STOPPING from."""

from __future__ import annotations

import socket
import time


class NotifySocket:
    """Binds ``address`` (a path, or ``@name`` in the abstract namespace)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address

    def next(self, timeout: float = 10.0) -> str | None:
        self.sock.settimeout(max(timeout, 1e-3))
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def wait_for(self, state: str, timeout: float = 20.0) -> list[str]:
        """Every message up to and including the first ``state``."""
        seen: list[str] = []
        while (message := self.next(timeout)) is not None:
            seen.append(message)
            if message == state:
                return seen
        raise AssertionError(f"no {state} within {timeout} s; got {seen}")

    def during(self, window_s: float) -> list[str]:
        """Every message that arrives within the next ``window_s`` seconds."""
        deadline = time.monotonic() + window_s
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            if (message := self.next(left)) is not None:
                seen.append(message)
        return seen

    def close(self) -> None:
        self.sock.close()
