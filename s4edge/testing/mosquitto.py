"""A real mosquitto broker on a free loopback port, from a temporary config."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class Mosquitto:
    """Start, kill and restart a mosquitto that keeps its state in ``workdir``.

    ``config_extra`` is appended to the generated config (TLS listeners, ACLs, ...);
    ``config_file`` replaces the generated config altogether. ``websockets=True`` adds a
    second listener on another free port that speaks MQTT over WebSocket (mosquitto's
    ``protocol websockets``, which serves any path), at ``ws_url``.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        config_extra: str = "",
        config_file: Path | None = None,
        anonymous: bool = True,
        websockets: bool = False,
    ) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.exe = exe
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = self.workdir / "mosquitto.log"
        if websockets and config_file is not None:
            raise ValueError("websockets=True adds to the generated config; put the listener in config_file instead")
        self.ws_port = free_port() if websockets else None
        ws_listener = f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\n" if websockets else ""
        if config_file is None:
            config_file = self.workdir / "mosquitto.conf"
            config_file.write_text(
                f"listener {self.port} 127.0.0.1\n"
                f"allow_anonymous {'true' if anonymous else 'false'}\n"
                # run as root, mosquitto drops to user "mosquitto", who cannot write the
                # persistence file into our workdir; as another user this line is a no-op
                f"user {getpass.getuser()}\n"
                "persistence true\n"
                f"persistence_location {self.workdir}/\n"
                "autosave_interval 1\n"
                "max_queued_messages 100000\n"
                "max_inflight_messages 100\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                "connection_messages true\n"
                f"{ws_listener}"
                f"{config_extra}\n"
            )
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        if self.ws_port is None:
            raise RuntimeError("this broker has no WebSocket listener: start it with websockets=True")
        return f"ws://{self.host}:{self.ws_port}/mqtt"

    def start(self, wait_port: int | None = None) -> Mosquitto:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, wait_port or self.port)
            if self.ws_port is not None:
                wait_for_port(self.host, self.ws_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; its log says:\n{self.log.read_text()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: the broker vanishes as in a power cut."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
