"""sipp as a PSAP on a free loopback port, for NG112 tests, benchmarks and drills.

The scenario files ship beside this module, in ``sipp/``. sipp logs every message it receives
(``-trace_msg``); ``received()`` gives back the MESSAGE requests from that log.
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from s4edge.resources import packaged
from s4edge.testing.mosquitto import free_port

SCENARIOS = packaged("testing", "sipp")
# -trace_msg: each entry is a dashed line with a timestamp, "<proto> message received [N] bytes :",
# a blank line, then the N bytes verbatim.
_SEPARATOR = re.compile(rb"^-{20,} \d{4}-\d\d-\d\d [\d:.]+\r?\n", re.MULTILINE)
_RECEIVED = re.compile(rb"(?:UDP|TCP) message received \[(\d+)\] bytes :\r?\n\r?\n")


def _bound(proto: str, port: int) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class SippPsap:
    """``with SippPsap("psap_200.xml", "tcp", tmp_path) as psap:`` … ``psap.uri`` … ``psap.received()``."""

    def __init__(self, scenario: str, proto: str, workdir: Path, calls: int | None = None) -> None:
        exe = shutil.which("sipp")
        if exe is None:
            raise RuntimeError("sipp is not installed: apt-get install sip-tester")
        if proto not in ("udp", "tcp"):
            raise ValueError("sipp PSAP speaks udp or tcp")
        self.exe = exe
        self.scenario = SCENARIOS / scenario if not Path(scenario).is_absolute() else Path(scenario)
        self.proto = proto
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.calls = calls
        self.port = free_port()
        self.log = self.workdir / f"sipp-{self.port}-messages.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"sip:psap@127.0.0.1:{self.port};transport={self.proto}"

    def start(self, timeout: float = 10.0) -> SippPsap:
        args = [
            self.exe,
            "-sf",
            str(self.scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-t",
            "u1" if self.proto == "udp" else "t1",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(self.log),
            "-trace_err",
            "-error_file",
            str(self.workdir / f"sipp-{self.port}-errors.log"),
        ]
        if self.calls is not None:
            args += ["-m", str(self.calls)]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not _bound(self.proto, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sipp exited: {self.process.stderr.read().decode()[-500:] if self.process.stderr else ''}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"sipp did not bind {self.proto}:{self.port} in {timeout} s")
            time.sleep(0.02)
        return self

    def received(self) -> list[bytes]:
        """Every SIP MESSAGE request sipp logged, raw, in arrival order."""
        if not self.log.exists():
            return []
        out = []
        for entry in _SEPARATOR.split(self.log.read_bytes()):
            head = _RECEIVED.match(entry)
            if head is not None:
                raw = entry[head.end() : head.end() + int(head[1])]
                if raw.startswith(b"MESSAGE "):
                    out.append(raw)
        return out

    def wait(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> SippPsap:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
