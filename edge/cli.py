"""``s4edge agent``: run or check a node from its config file."""

from __future__ import annotations

import fcntl
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Any

import typer

from s4edge.cloud_sync.logfmt import json_handler

agent_app = typer.Typer(help="Run the node agent.", no_args_is_help=True)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONFIG_OPTION = typer.Option(..., "--config", "-c", help="Node config YAML (see firmware_configs/sim-node.yaml).")


def _load(path: Path) -> Any:
    from s4edge.edge.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@agent_app.command("check")
def check(config: Path = CONFIG_OPTION) -> None:
    """Validate a node config without starting anything."""
    from s4edge.edge.app import uplink_settings
    from s4edge.edge.config import ConfigError

    node_config = _load(config)
    try:
        uplink_settings(node_config)  # the files it names: password, CA, certificate and key
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{config}: ok ({node_config.site}/{node_config.node_id}, {len(node_config.sources)} source(s))")


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


def _sole_agent_on(outbox: Path) -> IO[str]:
    """Lock ``outbox`` (its ``.lock`` file, flock(2)) for this process; BlockingIOError when
    another agent holds it. Two agents on one node, one started by hand beside the service, took
    the node's broker session from each other every second, and both raised every alarm."""
    outbox.parent.mkdir(parents=True, exist_ok=True)
    lock = outbox.with_name(f"{outbox.name}.lock").open("a")
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
    """Run the node until SIGTERM or SIGINT, then publish ``offline`` and stop cleanly; SIGHUP
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
