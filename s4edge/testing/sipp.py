"""sipp as a PSAP on a free loopback port, for NG112 tests, benchmarks and drills, and
sipp as a caller that sends an RFC 8876 MESSAGE written from the RFC to a PSAP under test.

The scenario files ship beside this module, in ``sipp/``:

- ``psap_200.xml``: answers every MESSAGE 200 OK;
- ``psap_425.xml``: answers 425 Bad Alert Message with AlertMsg-Error 101 (RFC 8876 §5);
- ``psap_503.xml``: answers 503 Service Unavailable with Retry-After: 300 (RFC 3261 §21.5.4);
- ``psap_rfc8876.xml``: checks the MESSAGE's RFC 8876 / IANA names with regexps, then 200 OK;
- ``uac_message.xml``: one MESSAGE to urn:service:sos, spoilable by ``-key`` (see ``run_uac``).

sipp logs every message it receives (``-trace_msg``); ``received()`` gives back the MESSAGE
requests from that log, ``UacResult.responses`` the responses.
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from s4edge.resources import packaged
from s4edge.testing.mosquitto import free_port

SCENARIOS = packaged("testing", "sipp")
# -trace_msg: each entry is a dashed line with a timestamp, "<proto> message received [N] bytes :",
# a blank line, then the N bytes verbatim.
_SEPARATOR = re.compile(rb"^-{20,} \d{4}-\d\d-\d\d [\d:.]+\r?\n", re.MULTILINE)
_RECEIVED = re.compile(rb"(?:UDP|TCP) message received \[(\d+)\] bytes :\r?\n\r?\n")


def _logged(log: Path, start: bytes) -> list[bytes]:
    """The messages sipp logged as received whose first bytes are ``start``, in order."""
    if not log.exists():
        return []
    out = []
    for entry in _SEPARATOR.split(log.read_bytes()):
        head = _RECEIVED.match(entry)
        if head is not None:
            raw = entry[head.end() : head.end() + int(head[1])]
            if raw.startswith(start):
                out.append(raw)
    return out


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
        return _logged(self.log, b"MESSAGE ")

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


@dataclass(frozen=True)
class UacResult:
    returncode: int  # 0: every call ended as the scenario wants
    responses: list[bytes]  # raw SIP responses, in arrival order
    errors: str  # sipp's error log, for a failing test's message


# What uac_message.xml sends unless told otherwise: a conformant RFC 8876 call.
UAC_DEFAULTS = {
    "cap_type": "application/EmergencyCallData.cap+xml",
    "cap_ref": "cid:cap@sipp.invalid",
    "cap_status": "Actual",
}


def run_uac(
    target: tuple[str, int],
    proto: str,
    workdir: Path,
    scenario: str = "uac_message.xml",
    timeout: float = 20.0,
    **keys: str,
) -> UacResult:
    """Send one call from sipp to ``target`` and wait for sipp to end.

    ``keys`` replace ``[name]`` in the scenario (sipp ``-key``); for ``uac_message.xml``
    they start from ``UAC_DEFAULTS``.
    """
    exe = shutil.which("sipp")
    if exe is None:
        raise RuntimeError("sipp is not installed: apt-get install sip-tester")
    if proto not in ("udp", "tcp"):
        raise ValueError("sipp calls over udp or tcp")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log, errors = workdir / f"sipp-uac-{port}-messages.log", workdir / f"sipp-uac-{port}-errors.log"
    path = SCENARIOS / scenario if not Path(scenario).is_absolute() else Path(scenario)
    args = [exe, f"{target[0]}:{target[1]}", "-sf", str(path), "-i", "127.0.0.1", "-p", str(port)]
    args += ["-t", "u1" if proto == "udp" else "t1", "-m", "1", "-nostdin", "-timeout", f"{timeout:g}s"]
    args += ["-timeout_error", "-trace_msg", "-message_file", str(log), "-trace_err", "-error_file", str(errors)]
    for name, value in ({**UAC_DEFAULTS, **keys} if scenario == "uac_message.xml" else keys).items():
        args += ["-key", name, value]
    done = subprocess.run(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout + 10
    )
    text = errors.read_text(errors="replace") if errors.exists() else ""
    return UacResult(done.returncode, _logged(log, b"SIP/2.0 "), text + done.stderr.decode(errors="replace"))
