"""``s4edge agent``: run or check a node from its config file."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import typer

from s4edge.cloud_sync.logfmt import json_handler

agent_app = typer.Typer(help="Run the node agent.", no_args_is_help=True)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROC_LOCKS = Path("/proc/locks")  # the kernel's table of file locks, proc(5)
CONFIG_OPTION = typer.Option(
    ...,
    "--config",
    "-c",
    help="Node config YAML: the node.yaml that `s4edge provision` writes (on a node, /etc/s4edge/node.yaml).",
)


def _load(path: Path, as_json: bool = False) -> Any:
    from s4edge.edge.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        if as_json:
            raise _refuse(str(exc), f"correct it; `s4edge agent check --config {path}` checks it", 2, True) from None
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _refuse(error: str, hint: str, code: int, as_json: bool) -> typer.Exit:
    """An error as the output was asked for: a line on stderr, or under --json one object on stdout,
    which a script parses whatever happened; the exit code is the same either way."""
    if as_json:
        typer.echo(json.dumps({"error": error, "hint": hint}))
    else:
        typer.echo(f"error: {error}: {hint}", err=True)
    return typer.Exit(code)


@agent_app.command("check")
def check(config: Path = CONFIG_OPTION) -> None:
    """Validate a node config without starting anything (offline: no broker, camera or model is opened)."""
    from s4edge.edge.app import uplink_settings
    from s4edge.edge.config import ConfigError

    node_config = _load(config)
    try:
        uplink_settings(node_config)  # the files it names: password, CA, certificate and key
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    found = _preflight(node_config)
    for level, problem in found:
        typer.echo(f"{level}: {config}: {problem}", err=True)
    if any(level == "error" for level, _ in found):
        raise typer.Exit(2)
    typer.echo(f"{config}: ok ({node_config.site}/{node_config.node_id}, {len(node_config.sources)} source(s))")


def _preflight(node_config: Any) -> list[tuple[str, str]]:
    """What each source's plugin finds would stop that source as the agent starts: its optional
    ``preflight(config)``, which answers (level, key, text) offline, opening no device and loading
    no model (a vision source: its model in the catalogue, the weights cached, a replayed file there)."""
    from s4edge.edge.sources import load_plugins

    found = []
    for index, source in enumerate(node_config.sources):
        plugin_check = getattr(load_plugins([source.type])[source.type], "preflight", None)
        for level, key, text in plugin_check(source) if plugin_check is not None else []:
            found.append((level, f"sources.{index}.{key}: {text}"))
    return found


@agent_app.command("unit")
def unit() -> None:
    """Print the shipped systemd unit: s4edge agent unit | sudo tee /etc/systemd/system/s4edge-agent.service"""
    from s4edge.resources import packaged

    typer.echo(packaged("firmware_configs", "systemd", "s4edge-agent.service").read_text(), nl=False)


def configure_logging(level: str, log_format: str) -> None:
    """Text for a person at a terminal; one JSON object per line for journald and log shippers."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    if log_format not in ("text", "json"):
        typer.echo(f"error: --log-format must be auto, text or json, not {log_format!r}", err=True)
        raise typer.Exit(2)
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        typer.echo(f"error: --log-level must be DEBUG, INFO, WARNING or ERROR, not {level!r}", err=True)
        raise typer.Exit(2)
    if log_format == "json":
        logging.basicConfig(level=level.upper(), handlers=[json_handler()], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT, force=True)


def _lock_file(outbox: Path) -> Path:
    return outbox.with_name(f"{outbox.name}.lock")


def agent_pid(outbox: Path) -> int | None:
    """The process id of the agent that holds ``outbox``'s lock (``_sole_agent_on``), or None.
    Read from ``PROC_LOCKS``, not found by taking the lock: that, for its moment, would refuse
    an agent starting meanwhile. OSError where the table cannot be read (not Linux)."""
    try:
        lock = _lock_file(outbox).stat()
    except FileNotFoundError:
        return None  # no agent ever ran on it
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2228897 0 EOF": the holder's pid, and the locked file
    # as MAJOR:MINOR:INODE, the device in hex (fs/locks.c, lock_get_status); a waiter's line has
    # "->" after its number, and is not a holder.
    held = f"{os.major(lock.st_dev):02x}:{os.minor(lock.st_dev):02x}:{lock.st_ino}"
    for line in PROC_LOCKS.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == held:
            return int(fields[4])
    return None


def _sole_agent_on(outbox: Path) -> IO[str]:
    """Lock ``outbox`` (its ``.lock`` file, flock(2)) for this process; BlockingIOError when
    another agent holds it. Two agents on one node, one started by hand beside the service, took
    the node's broker session from each other every second, and both raised every alarm."""
    outbox.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_file(outbox).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise
    return lock


@agent_app.command("run")
def run(
    config: Path = CONFIG_OPTION,
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
    log_format: str = typer.Option(
        "auto", help="text, json (one object per line: ts, level, logger, msg) or auto: text on a terminal, else json."
    ),
) -> None:
    """Run the node until SIGTERM or SIGINT, then publish its offline status and stop cleanly; SIGHUP
    applies the config file again (a refused one is logged, and the running one stays)."""
    node_config = _load(config)
    configure_logging(log_level, log_format)
    from s4edge.edge.app import Node
    from s4edge.edge.config import ConfigError

    try:
        try:
            lock = _sole_agent_on(node_config.outbox.path)  # held until the process ends
            node = Node(node_config, base_dir=config.resolve().parent)
        except BlockingIOError:
            typer.echo(
                f"error: another agent runs on the outbox {node_config.outbox.path}; stop it first "
                "(the service: `sudo systemctl stop s4edge-agent`)",
                err=True,
            )
            raise typer.Exit(1) from None
        except (sqlite3.Error, OSError) as exc:  # exit 1: systemd restarts the agent, the disk may come back
            typer.echo(f"error: cannot open the outbox {node_config.outbox.path}: {exc}", err=True)
            raise typer.Exit(1) from None
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logging.getLogger(__name__).info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        reread = threading.Event()  # SIGHUP: apply the config file again, as a reload_config does
        signal.signal(signal.SIGHUP, lambda signum, frame: reread.set())
        node.run(stop, reread, config)
        lock.close()  # the next agent may start
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None


@agent_app.command("status")
def status(
    config: Path = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Show the node's outbox: queued alerts, when it last got through, whether an agent runs.

    The oldest queued alert's age, the broker's last acknowledgement and the aggregator's last
    receipt, read without the agent's lock and changing nothing: the agent may run meanwhile."""
    from s4edge.cloud_sync.outbox import read_backlog

    node_config = _load(config, as_json)
    outbox = Path(node_config.outbox.path)
    try:
        backlog = read_backlog(outbox)
    except (OSError, sqlite3.Error) as exc:
        raise _refuse(*_outbox_problem(exc, outbox, config), 1, as_json) from None
    try:
        pid: int | None = agent_pid(outbox)
        running: bool | None = pid is not None
    except OSError:
        pid, running = None, None  # unknown: no /proc/locks
    now = datetime.now(UTC)
    report = {
        "site": node_config.site,
        "node_id": node_config.node_id,
        "outbox": str(outbox),
        "agent_running": running,
        "agent_pid": pid,
        "alerts_queued": backlog.queued.get("alert", 0),
        "alerts_awaiting_receipt": backlog.alerts_in_flight,
        "queued": backlog.queued,
        "telemetry_dropped": backlog.telemetry_dropped,
        **_when("oldest_alert", backlog.oldest_alert, now),
        **_when("last_published", backlog.published_at, now),
        **_when("last_receipt", backlog.receipt_at, now),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    agent = {True: f"running (pid {pid})", False: "not running", None: "unknown (no /proc/locks)"}[running]
    others = ", ".join(f"{kind} {n}" for kind, n in sorted(backlog.queued.items()) if kind != "alert") or "none"
    lines = [
        ("node", f"{node_config.site}/{node_config.node_id}"),
        ("outbox", str(outbox)),
        ("agent", agent),
        ("alerts queued", f"{report['alerts_queued']} ({backlog.alerts_in_flight} sent, awaiting the receipt)"),
        ("oldest alert", _ago(backlog.oldest_alert, now, "none queued")),
        ("other queued", f"{others}; telemetry dropped {backlog.telemetry_dropped}"),
        ("last publish", _ago(backlog.published_at, now, "none recorded")),
        ("last receipt", _ago(backlog.receipt_at, now, "none recorded")),
    ]
    for label, value in lines:
        typer.echo(f"{label + ':':<14} {value}")


def _outbox_problem(exc: OSError | sqlite3.Error, outbox: Path, config: Path) -> tuple[str, str]:
    """What keeps ``status`` from reading the outbox, and what to do about it."""
    from s4edge.cloud_sync.outbox import NotAnOutbox

    if isinstance(exc, FileNotFoundError):
        return (
            f"no outbox at {outbox}",
            f"no agent has run with this config yet, or outbox.path in {config} is not the running agent's",
        )
    if isinstance(exc, PermissionError):
        return f"cannot read the outbox {outbox} ({exc.strerror})", "run this as the agent's user, or with sudo"
    if isinstance(exc, NotAnOutbox):
        return f"{outbox} is not an s4edge outbox ({exc})", f"check outbox.path in {config}"
    return (
        f"cannot read the outbox {outbox}: {getattr(exc, 'strerror', None) or exc}",
        f"check outbox.path in {config}, and the disk it lies on",
    )


def _when(key: str, at: datetime | None, now: datetime) -> dict[str, Any]:
    """``key``_at (ISO 8601, UTC) and ``key``_age_s, None for never."""
    return {
        f"{key}_at": at.isoformat().replace("+00:00", "Z") if at else None,
        f"{key}_age_s": round((now - at).total_seconds(), 1) if at else None,
    }


def _ago(at: datetime | None, now: datetime, never: str) -> str:
    if at is None:
        return never
    seconds = (now - at).total_seconds()
    when = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if seconds < 0:  # a board without a battery-backed clock may boot in the past
        return f"{when}, ahead of this node's clock by {_duration(-seconds)} (check the clock: `timedatectl`)"
    return f"{when}, {_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{minutes} min"
    if seconds < 172800:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"
