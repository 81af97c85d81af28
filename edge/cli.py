"""``s4edge agent``: run or check a node from its config file."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from edge.config import ConfigError, load_config

agent_app = typer.Typer(help="Run the node agent.", no_args_is_help=True)

CONFIG_OPTION = typer.Option(..., "--config", "-c", help="Node config YAML (see firmware_configs/sim-node.yaml).")


def _load(path: Path) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@agent_app.command("check")
def check(config: Path = CONFIG_OPTION) -> None:
    """Validate a node config without starting anything."""
    node_config = _load(config)
    typer.echo(f"{config}: ok ({node_config.site}/{node_config.node_id}, {len(node_config.sources)} source(s))")


@agent_app.command("run")
def run(
    config: Path = CONFIG_OPTION,
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the node until SIGTERM or SIGINT, then publish ``offline`` and stop cleanly."""
    node_config = _load(config)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge.app import Node

    try:
        node = Node(node_config, base_dir=config.resolve().parent)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logging.getLogger(__name__).info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        node.run(stop)
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
