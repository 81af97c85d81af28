"""``s4edge doctor``: the checks a technician runs on site, each PASS, WARN or FAIL with
what to do about it. Every check is a small function that returns ``Check``s; hardware
and the clock are reached through arguments, so tests hand in simulators.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import typer

from s4edge.shown import hide_query_credentials, shown_url

Status = Literal["PASS", "WARN", "FAIL"]
BROKER_TIMEOUT_S = 8.0
CAMERA_FRAMES = 10
MIN_FREE_MB, LOW_FREE_MB = 50, 500
# Serial transports pyserial opens by URL (pyserial's URL handlers).
SERIAL_PREFIXES = ("/dev/tty", "/dev/serial", "socket://", "rfc2217://", "loop://", "spy://")
# What to do about each finding: the wording a technician reads, in one place.
HINT = {
    "i2c_enable": (
        "enable I2C: on a Raspberry Pi `sudo raspi-config nonint do_i2c 0` (or dtparam=i2c_arm=on in "
        "/boot/firmware/config.txt) and reboot; on a Jetson run `sudo /opt/nvidia/jetson-io/jetson-io.py`"
    ),
    "i2c_group": "run the agent as a member of the i2c group (the systemd unit does)",
    "i2c_wiring": "check wiring, power and the address jumper; `i2cdetect -y {bus}` shows what answers",
    "serial": (
        "check the cable and `ls -l /dev/serial/by-id/`; the agent's user must be in the dialout group; "
        "on a Pi enable the UART in raspi-config"
    ),
    "camera_open": (
        "check the cable/URL; for a CSI camera `rpicam-hello --list-cameras`, for USB `v4l2-ctl --list-devices`; "
        "the agent's user must be in the video group"
    ),
    "camera_silent": "another process may hold the camera (stop the agent first), or it needs power",
    "camera_slow": "lower camera.fps or the resolution; check USB bandwidth and lighting (exposure)",
    "model_name": "check model.name against `s4edge models list`",
    "model_pull": "run `s4edge models pull {model}` (offline: `--from DIR` with the weights)",
    "model_sha": "delete them and run `s4edge models pull {model}`",
    "model_run": "check model.backend.providers against the installed onnxruntime",
    "model_manifest": "correct {field} in the model's manifest (models/README.md), then `s4edge detect` on a photo",
    "model_slow": "use a quantized model or lower camera.fps",
    "broker_config": "fix mqtt.* in the config",
    "broker_cert": "mqtt.ca_file must be the fleet CA, and the URL's host must be in the broker certificate",
    "broker_cert_time": (
        "check this node's clock first (a Pi without an RTC battery boots with a stale date; "
        "`timedatectl`): TLS judges the certificate by it; if the clock is right, issue the broker's "
        "certificate again (`s4edge fleet ca server-cert`)"
    ),
    "broker_unreachable": "check the URL, the network and the firewall (port open?); is the broker running?",
    "broker_silent": (
        "the broker closed the connection: a TLS port needs mqtts:// (wss:// for WebSocket), a client "
        "certificate may be required or refused (see the broker log)"
    ),
    "broker_refused": (
        "the broker does not know this password: copy the mqtt.password that `s4edge provision` wrote last for "
        "this node beside the config (each run rotates it), and reload the broker after provisioning"
    ),
    "broker_plaintext": "the fleet should use TLS: mqtts://, or wss:// over WebSocket",
    "clock_unset": (
        "set the time (`sudo date -s ...` or NTP): TLS certificates look not yet valid and alert timestamps "
        "are wrong; a Pi has no RTC battery unless one is fitted"
    ),
    "clock_ntp": (
        "`sudo timedatectl set-ntp true`; on a closed network point systemd-timesyncd/chrony at a local NTP server"
    ),
    "clock_unknown": "check the clock against a reference",
    "disk_full": "free space: alerts queue on disk during a broker outage",
    "disk_folder": "the systemd unit creates it (StateDirectory=s4edge); else `sudo mkdir -p` it",
    "disk_read_only": (
        "the agent's user must be able to write there (the systemd unit's StateDirectory=s4edge is); "
        "a read-only mount needs remounting read-write"
    ),
    "disk_low": "a long outage may fill it; telemetry is bounded, alerts are not",
    "gpio": (
        "gpiozero and its pin library read the lines: on a Raspberry Pi `sudo apt install python3-gpiozero "
        "python3-lgpio` (a venv made with --system-site-packages sees them), elsewhere `pip install "
        "'s4edge[gpio]'`; the agent's user must be in the gpio group, and a running agent holds its lines (stop it)"
    ),
    "simulated": (
        "set `status: Exercise` in the config while it plays simulated data (a drill, commissioning); "
        "wire the real sensors and camera before the node reports as Actual"
    ),
    "config": "fix what the detail names (a key, or a line and column); `s4edge agent check -c FILE` re-checks",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


def check_config(path: Path) -> tuple[Check, Any]:
    from s4edge.edge.config import ConfigError, load_config

    try:
        config: Any = load_config(path)  # NodeConfig's sources are a plugin-built union
    except ConfigError as exc:
        return Check("config", "FAIL", str(exc), HINT["config"]), None
    return Check("config", "PASS", f"{config.site}/{config.node_id}, {len(config.sources)} source(s)"), config


def _sources(config: Any, kind: str) -> Iterator[Any]:
    return (s for s in config.sources if getattr(s, "type", None) == kind)


def _open_smbus(device: str) -> Any:
    from s4edge.drivers.i2c import SMBus2Bus

    return SMBus2Bus(device)


def check_i2c(config: Any, open_bus: Callable[[str], Any] = _open_smbus) -> list[Check]:
    """Every I2C address the ``sensors`` sources name acknowledges its address (SMBus quick write)."""
    checks = []
    for source in _sources(config, "sensors"):
        name = f"i2c {source.name}"
        if source.bus == "sim":
            checks.append(Check(name, "PASS", "simulated bus: no hardware to check"))
            continue
        from s4edge.edge.sensing.source import DEFAULT_ADDRESS, address_of

        expected = {address_of(s): f"{s.name} ({s.kind})" for s in source.sensors if s.kind in DEFAULT_ADDRESS}
        try:
            bus = open_bus(source.bus)
        except FileNotFoundError:
            checks.append(Check(name, "FAIL", f"{source.bus} does not exist", HINT["i2c_enable"]))
            continue
        except (OSError, ImportError) as exc:
            checks.append(Check(name, "FAIL", f"cannot open {source.bus}: {exc}", HINT["i2c_group"]))
            continue
        missing = []
        try:
            for address, who in sorted(expected.items()):
                try:
                    bus.write(address, b"")
                except OSError:
                    missing.append(f"0x{address:02x} {who}")
        finally:
            if hasattr(bus, "close"):  # the simulator has nothing to close
                bus.close()
        bus_no = source.bus.rsplit("-", 1)[-1]
        if missing:
            checks.append(
                Check(name, "FAIL", f"no answer from {', '.join(missing)}", HINT["i2c_wiring"].format(bus=bus_no))
            )
        else:
            found = ", ".join(f"0x{a:02x} {w}" for a, w in sorted(expected.items()))
            checks.append(Check(name, "PASS", f"{source.bus}: {found or 'no I2C sensors configured'}"))
    return checks


def _open_gpio(pin: int | str, active_high: bool) -> Any:
    from s4edge.drivers.digital_input import GpioInput

    with warnings.catch_warnings():  # gpiozero warns of each pin library it falls back from: the check says it
        warnings.simplefilter("ignore")
        return GpioInput(pin, active_high=active_high)


def check_gpio(config: Any, open_pin: Callable[[int | str, bool], Any] = _open_gpio) -> list[Check]:
    """Every GPIO line a smoke or flame detector is wired to opens, as the agent opens it at start:
    a line that does not (no gpiozero, no pin library, no gpio group) stops the agent from starting."""
    checks = []
    for source in _sources(config, "sensors"):
        if source.bus == "sim":
            continue
        wired = [s for s in source.sensors if s.pin is not None]
        failed = []
        for sensor in wired:
            try:
                open_pin(sensor.pin, sensor.active_high).close()
            except Exception as exc:  # ImportError, or any of gpiozero's own (BadPinFactory, GPIOPinInUse ...)
                failed.append(f"GPIO {sensor.pin} {sensor.name} ({sensor.kind}): {type(exc).__name__}: {exc}")
        if failed:
            checks.append(Check(f"gpio {source.name}", "FAIL", "; ".join(failed), HINT["gpio"]))
        elif wired:
            opened = ", ".join(f"GPIO {s.pin} {s.name}" for s in wired)
            checks.append(Check(f"gpio {source.name}", "PASS", f"{opened} open"))
    return checks


def _simulated(source: Any) -> str | None:
    """What a source plays instead of the place it watches, if it does."""
    if source.type == "scenario":
        return f"{source.name}: scenario {Path(source.file).name}"
    if source.type == "sensors" and source.bus == "sim":
        return f"{source.name}: simulated sensors" + (
            f", scenario {Path(source.scenario).name}" if source.scenario else ""
        )
    url = getattr(getattr(source, "camera", None), "url", None)
    if source.type == "vision" and isinstance(url, str) and url.startswith("replay:"):
        return f"{source.name}: replayed {Path(url.removeprefix('replay:')).name}"
    return None


def check_simulation(config: Any) -> list[Check]:
    """A node that plays simulated data reports it as real unless its status says otherwise: the
    operators, and for critical alerts a PSAP, would act on a replayed clip or a scripted gas leak."""
    simulated = [found for source in config.sources if (found := _simulated(source)) is not None]
    if not simulated:
        return []
    detail = "; ".join(simulated)
    if config.status == "Actual":
        return [Check("simulated", "WARN", f"{detail}, reported as status Actual", HINT["simulated"])]
    return [Check("simulated", "PASS", f"{detail}, reported as status {config.status}")]


def _serial_urls(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(config key, URL) of every serial port a source config names, at any depth."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _serial_urls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _serial_urls(item, f"{where}[{i}]")
    elif isinstance(value, str | Path) and str(value).startswith(SERIAL_PREFIXES):
        yield where, str(value)


def check_serial(config: Any) -> list[Check]:
    checks = []
    for i, source in enumerate(config.sources):
        for key, url in _serial_urls(source, f"sources[{i}]"):
            import serial  # pyserial, imported only when a port is configured

            try:
                serial.serial_for_url(url, timeout=1).close()
            except (serial.SerialException, OSError, ValueError) as exc:
                checks.append(Check(f"serial {key}", "FAIL", f"cannot open {url}: {exc}", HINT["serial"]))
            else:
                checks.append(Check(f"serial {key}", "PASS", f"{url} opens"))
    return checks


def check_camera(config: Any, frames: int = CAMERA_FRAMES) -> list[Check]:
    """The camera opens and delivers frames; the rate is compared with ``camera.fps`` when set."""
    checks = []
    for source in _sources(config, "vision"):
        from s4edge.drivers.frames import FrameSourceError, open_source

        cam, name = source.camera, f"camera {source.name}"
        size = (cam.width, cam.height) if cam.width and cam.height else None
        try:
            feed = open_source(cam.url, fps=cam.fps, realtime=True, size=size)
            feed.open()
        except (FrameSourceError, OSError, ImportError, ValueError) as exc:
            checks.append(Check(name, "FAIL", f"cannot open {shown_url(cam.url)}: {exc}", HINT["camera_open"]))
            continue
        try:
            got, start, deadline = 0, time.monotonic(), time.monotonic() + max(5.0, cam.stall_after_s)
            while got < frames and time.monotonic() < deadline:
                ok, frame, _ = feed.read()
                got += int(ok and frame is not None)
            elapsed = max(time.monotonic() - start, 1e-6)
        finally:
            feed.close()
        fps = got / elapsed
        if got == 0:
            checks.append(
                Check(name, "FAIL", f"{shown_url(cam.url)} opened but delivered no frame", HINT["camera_silent"])
            )
        elif cam.fps and fps < 0.8 * cam.fps:
            checks.append(Check(name, "WARN", f"{fps:.1f} fps, configured {cam.fps:g}", HINT["camera_slow"]))
        else:
            checks.append(Check(name, "PASS", f"{got} frames at {fps:.1f} fps"))
    return checks


def check_model(config: Any, catalogue: Any = None) -> list[Check]:
    """The model is in the cache with the manifest's sha256, and one inference fits a frame interval."""
    checks = []
    for source in _sources(config, "vision"):
        import numpy as np

        from s4edge.edge.vision.catalogue import Catalogue, CatalogueError
        from s4edge.edge.vision.detector import Detector
        from s4edge.edge.vision.manifest import ManifestError

        cat = catalogue or Catalogue.from_env()
        model, name = source.model.name, f"model {source.model.name}"
        try:
            verified = cat.verify(model)
        except ManifestError as exc:
            checks.append(Check(name, "FAIL", str(exc), HINT["model_manifest"].format(field=exc.field)))
            continue
        except CatalogueError as exc:
            checks.append(Check(name, "FAIL", str(exc), HINT["model_name"]))
            continue
        if not verified.cached:
            checks.append(
                Check(
                    name,
                    "FAIL",
                    f"{model} is not in the model cache {cat.cache_dir}",
                    HINT["model_pull"].format(model=model),
                )
            )
            continue
        if not verified.ok:
            checks.append(
                Check(
                    name,
                    "FAIL",
                    f"cached weights have sha256 {verified.actual_sha256}, not the manifest's",
                    HINT["model_sha"].format(model=model),
                )
            )
            continue
        try:
            detector = Detector.from_catalogue(cat, model, source.model.backend, source.model.score_threshold)
            frame = np.zeros((source.camera.height or 480, source.camera.width or 640, 3), np.uint8)
            detector.detect(frame)  # the first run pays for lazy initialisation
            start = time.perf_counter()
            detector.detect(frame)
            ms = (time.perf_counter() - start) * 1000
        except ManifestError as exc:  # the manifest misdescribes the model: no runtime setting helps
            hint = HINT["model_manifest"].format(field=exc.field)
            checks.append(Check(name, "FAIL", f"cannot run {model}: {exc}", hint))
            continue
        except Exception as exc:  # any runtime failure (onnxruntime raises its own types) is the finding
            checks.append(Check(name, "FAIL", f"cannot run {model}: {exc}", HINT["model_run"]))
            continue
        budget = 1000.0 / (source.camera.fps or 10.0)
        status: Status = "PASS" if ms <= budget else "WARN"
        checks.append(
            Check(
                name,
                status,
                f"sha256 ok; one inference {ms:.0f} ms (budget {budget:.0f} ms)",
                "" if status == "PASS" else HINT["model_slow"],
            )
        )
    return checks


# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED (x509_vfy.h)
CERT_TIME_CODES: Final = (9, 10)


def check_broker(config: Any, timeout: float = BROKER_TIMEOUT_S) -> Check:
    """A real MQTT connect with the node's transport, TLS settings and credentials; reports the CONNACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from s4edge.cloud_sync.broker_url import mqtt_client
    from s4edge.edge.app import uplink_settings
    from s4edge.edge.config import ConfigError

    try:
        s = uplink_settings(config)
        endpoint = s.endpoint
    except (ConfigError, ValueError) as exc:
        return Check("broker", "FAIL", str(exc), HINT["broker_config"])
    host, port, tls = endpoint.host, endpoint.port, endpoint.tls
    # The fleet's broker ties the client id to the username (use_username_as_clientid), so this
    # connect is the node's own: keep its persistent session (clean_start=False, the agent's
    # expiry) rather than wiping it, should an agent be running; it reconnects within seconds.
    client = mqtt_client(endpoint, client_id=f"{s.client_id}-doctor", protocol=mqtt.MQTTv5)
    session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    session.SessionExpiryInterval = s.session_expiry_s
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if tls:
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if s.cert_file:
            context.load_cert_chain(s.cert_file, s.key_file)
        client.tls_set_context(context)
    answered, outcome = threading.Event(), {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    over = f"WebSocket {hide_query_credentials(endpoint.path)}, " if endpoint.transport == "websockets" else ""
    where = f"{host}:{port} ({over}{'TLS' if tls else 'plaintext'}) as {s.username or 'anonymous'}"
    try:
        client.connect(host, port, keepalive=10, clean_start=False, properties=session)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in CERT_TIME_CODES:  # the certificate is fine; this node's clock may not be
            clock = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%MZ}"
            return Check(
                "broker",
                "FAIL",
                f"{where}: {exc.verify_message} (this node's clock: {clock})",
                HINT["broker_cert_time"],
            )
        return Check("broker", "FAIL", f"{where}: {exc.verify_message}", HINT["broker_cert"])
    except (OSError, ssl.SSLError) as exc:
        return Check("broker", "FAIL", f"{where}: {exc}", HINT["broker_unreachable"])
    client.loop_start()
    try:
        if not answered.wait(timeout):
            return Check("broker", "FAIL", f"{where}: no CONNACK within {timeout:g} s", HINT["broker_silent"])
        reason = outcome["reason"]
        if reason.is_failure:
            return Check("broker", "FAIL", f"{where}: CONNACK {reason}", HINT["broker_refused"])
        return Check(
            "broker",
            "PASS" if tls else "WARN",
            f"{where}: CONNACK {reason}",
            "" if tls else HINT["broker_plaintext"],
        )
    finally:
        client.disconnect()
        client.loop_stop()


def _timedatectl() -> str | None:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def check_clock(
    ntp_state: Callable[[], str | None] = _timedatectl, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
) -> Check:
    year = now().year
    if year < 2025:
        return Check("clock", "FAIL", f"the clock says {now():%Y-%m-%d}", HINT["clock_unset"])
    state = ntp_state()
    if state == "yes":
        return Check("clock", "PASS", f"NTP synchronised ({now():%Y-%m-%dT%H:%M:%SZ})")
    if state == "no":
        return Check("clock", "WARN", "not NTP synchronised", HINT["clock_ntp"])
    return Check("clock", "WARN", "NTP state unknown (no timedatectl)", HINT["clock_unknown"])


def check_disk(config: Any, min_mb: int = MIN_FREE_MB, low_mb: int = LOW_FREE_MB) -> Check:
    folder = Path(config.outbox.path).parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free_mb = shutil.disk_usage(existing).free / 1e6
    detail = f"{free_mb:.0f} MB free for the outbox {config.outbox.path}"
    if free_mb < min_mb:
        return Check("disk", "FAIL", detail, HINT["disk_full"])
    if existing != folder:
        return Check("disk", "WARN", f"{detail}; {folder} does not exist yet", HINT["disk_folder"])
    # free space is no use where the agent may not write: SQLite makes its journal beside the file
    unwritable = [p for p in (folder, Path(config.outbox.path)) if p.exists() and not os.access(p, os.W_OK)]
    if unwritable:
        return Check("disk", "FAIL", f"{detail}; {unwritable[0]} is not writable", HINT["disk_read_only"])
    if free_mb < low_mb:
        return Check("disk", "WARN", detail, HINT["disk_low"])
    return Check("disk", "PASS", detail)


def run_checks(path: Path, broker_timeout: float = BROKER_TIMEOUT_S) -> list[Check]:
    first, config = check_config(path)
    if config is None:
        return [first, check_clock()]
    return [
        first,
        *check_simulation(config),
        *check_i2c(config),
        *check_gpio(config),
        *check_serial(config),
        *check_camera(config),
        *check_model(config),
        check_broker(config, broker_timeout),
        check_clock(),
        check_disk(config),
    ]


def _print_table(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    table = Table("check", "status", "detail", "what to do", title="s4edge doctor")
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.hint)
    Console().print(table)


def doctor(
    config: Path = typer.Option(..., "--config", "-c", help="Node config YAML."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    broker_timeout: float = typer.Option(BROKER_TIMEOUT_S, help="Seconds to wait for the broker's CONNACK."),
) -> None:
    """Check a node on site: config, I2C, GPIO, serial, camera, model, broker over TLS, clock, disk."""
    checks = run_checks(config, broker_timeout)
    if as_json:
        typer.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        _print_table(checks)
    if any(c.status == "FAIL" for c in checks):
        raise typer.Exit(1)
