"""Length-prefixed frames over a child process's stdin and stdout (no pickle).

Each frame is a 4-byte big-endian length and that many bytes, JSON by convention. The
aggregator's writer process and the NG112 forwarder process speak it to their parent.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import IO, Any

from s4edge.cloud_sync.logfmt import LOG_FORMAT_ENV, json_handler

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


def receive_spec(stream: IO[bytes]) -> dict[str, Any] | None:
    """A child's first frame, the JSON spec it runs by, with the parent's log level (its
    ``log_level``, when it has one) applied; None when the parent went away first."""
    first = receive_frame(stream)
    if first is None:
        return None
    spec: dict[str, Any] = json.loads(first)
    if "log_level" in spec:
        logging.getLogger("s4edge").setLevel(spec["log_level"])
    return spec


def run_child(name: str, serve: Callable[[IO[bytes], IO[bytes]], int]) -> None:
    """A child process's main: its logging (JSON when the parent logs JSON), and ``serve``
    on its stdin and stdout. Ctrl-C reaches the whole process group: the parent decides
    when its child ends, so the child ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get(LOG_FORMAT_ENV) == "json":
        logging.basicConfig(level=logging.WARNING, handlers=[json_handler()])
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
