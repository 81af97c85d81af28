"""Length-prefixed frames over a child process's stdin and stdout (no pickle).

Each frame is a 4-byte big-endian length and that many bytes, JSON by convention. The
aggregator's writer process and the NG112 forwarder process speak it to their parent.
"""

from __future__ import annotations

import struct
from typing import IO

_LENGTH = struct.Struct(">I")


def send_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


def receive_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at the end of the stream (the other side is gone)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None
