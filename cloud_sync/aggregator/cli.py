"""``s4edge aggregator run``: the centre side, from the command line."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from s4edge.cloud_sync.logfmt import LOG_FORMAT_ENV, json_handler

if TYPE_CHECKING:
    from s4edge.cloud_sync.aggregator.broker import BrokerConfig

aggregator_app = typer.Typer(help="The central aggregator: ingest, store, HTTP API, dashboard.", no_args_is_help=True)


@aggregator_app.callback()
def _group() -> None:
    """The central aggregator: ingest, store, HTTP API, dashboard."""


@aggregator_app.command("unit")
def unit() -> None:
    """Print the shipped systemd unit (it keeps restarting until the broker and store answer):
    s4edge aggregator unit | sudo tee /etc/systemd/system/s4edge-aggregator.service"""
    from s4edge.resources import packaged

    typer.echo(packaged("firmware_configs", "systemd", "s4edge-aggregator.service").read_text(), nl=False)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"{value!r}: give HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def _secret_file(path: Path, option: str, risk: str, trim: Callable[[str], str] = str.strip) -> str:
    """The secret in ``path``, read once, at start (out of `ps` and the environment). Exit 2 naming
    ``option`` for a file that is missing, unreadable, not text or empty; a warning for one that
    other users can read (``risk``: what they could do with it)."""
    try:
        secret = trim(path.read_text())
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise typer.BadParameter(f"{path}: cannot read: {exc.strerror}", param_hint=option) from None
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{path}: not UTF-8 text", param_hint=option) from None
    if not secret:
        raise typer.BadParameter(f"{path}: the file is empty", param_hint=option)
    if mode & 0o004:
        typer.echo(
            f"warning: {option} {path} is readable by other users (mode {mode:04o}): {risk}; chmod 600 {path}",
            err=True,
        )
    return secret


def _operator_token(token: str, token_file: Path | None) -> str | None:
    if token and token_file is not None:
        raise typer.BadParameter("give --operator-token or --operator-token-file, not both")
    if token_file is not None:
        token = _secret_file(
            token_file, "--operator-token-file", "whoever reads it can acknowledge alerts and send signed commands"
        )
    return token or None


def _broker_password(config: BrokerConfig, password_file: Path) -> str:
    """The broker password from ``--password-file``: the one place it is given, for a username."""
    if config.password is not None:
        given = "S4EDGE_BROKER_PASSWORD" if os.environ.get("S4EDGE_BROKER_PASSWORD") else "--password"
        raise typer.BadParameter(
            f"give the broker password once: {given} or --password-file, not both", param_hint="--password-file"
        )
    if config.endpoint.password is not None:
        raise typer.BadParameter(
            f"--broker {config.shown_url} holds a password too: give it once, in the file, and leave it out of the URL",
            param_hint="--password-file",
        )
    if config.username is None and config.endpoint.username is None:
        raise typer.BadParameter(
            "a password is for a username: give --username (or S4EDGE_BROKER_USERNAME)", param_hint="--password-file"
        )
    # a password may hold spaces: only the line break an editor ends the file with is dropped
    return _secret_file(
        password_file,
        "--password-file",
        "whoever reads it can sign in to the broker as the aggregator, read every alert, and send nodes receipts "
        "that make them drop alerts the aggregator never stored",
        trim=lambda text: text.rstrip("\r\n"),
    )


@aggregator_app.command("run")
def run(
    broker: str = typer.Option(
        ..., "--broker", help="mqtt://HOST:PORT, mqtts://HOST:PORT, or over WebSocket ws:// or wss://HOST:PORT/PATH"
    ),
    db: str = typer.Option(
        "sqlite:///s4edge-aggregator.db",
        "--db",
        help="sqlite:///relative/file.db, sqlite:////absolute/file.db, or postgresql://USER:PASSWORD@HOST:PORT/DB",
    ),
    db_schema: str = typer.Option("", "--db-schema", help="PostgreSQL schema for the tables (default: public)"),
    sqlite_sync: str = typer.Option(
        "FULL", "--sqlite-sync", help="FULL: commits survive a power cut; NORMAL: faster, survive a process crash"
    ),
    writer: str = typer.Option(
        "",
        "--writer",
        help="Validate and commit in a child process (another core: `s4edge bench ingest`) or in a thread. "
        "Default: process for ingest in this process, thread in each of --workers (a core each)",
    ),
    http: str = typer.Option("127.0.0.1:8080", "--http", help="HOST:PORT for the API and dashboard"),
    group: str = typer.Option(
        "",
        "--group",
        help="Run as one of several replicas sharing the fleet through MQTT v5 $share/GROUP/ subscriptions. "
        "Without it (the default) the single aggregator holds a plain persistent subscription (see docs/emqx.md "
        "on restarts).",
    ),
    client_id: str = typer.Option(
        "",
        "--client-id",
        help="Stable MQTT client id of this replica (default: GROUP-HOSTNAME, s4edge-HOSTNAME without --group); "
        "its persistent session is found again by it",
    ),
    protocol: str = typer.Option("auto", "--protocol", help="auto (5, then 3.1.1), 5 or 3.1.1"),
    ca_file: str = typer.Option(
        "",
        "--ca-file",
        help="CA bundle (PEM) that signed the broker's certificate, e.g. the fleet's ca.crt (default: the "
        "system's trusted CAs). Expired: refused at start; expiring within 30 days: a warning",
    ),
    cert_file: str = typer.Option(
        "",
        "--cert-file",
        help="Client certificate (PEM) for mutual TLS; {worker} in the name gives each ingest worker its own "
        "(default: none, the broker login is --username). Expired: refused at start; expiring within 30 days: "
        "a warning",
    ),
    key_file: str = typer.Option(
        "", "--key-file", help="The --cert-file's private key (default: none, the key is in --cert-file)"
    ),
    username: str = typer.Option(
        "",
        "--username",
        envvar="S4EDGE_BROKER_USERNAME",
        help="Broker username; {worker} in it gives each ingest worker its own (default: the one in --broker's "
        "URL, else none)",
    ),
    password: str = typer.Option(
        "",
        "--password",
        envvar="S4EDGE_BROKER_PASSWORD",
        help="Broker password, shown in `ps`: prefer --password-file (default: the one in --broker's URL, else none)",
    ),
    password_file: Path | None = typer.Option(
        None,
        "--password-file",
        help="Read the broker password from this file, once at start (keeps it out of `ps` and the environment; "
        "`s4edge fleet aggregator-credentials` writes it; default: none)",
    ),
    heartbeat_interval: float = typer.Option(30.0, "--heartbeat-interval", help="Assumed until two heartbeats show it"),
    stale_factor: float = typer.Option(3.0, "--stale-factor", help="Stale after this many silent intervals"),
    max_clock_skew: float = typer.Option(
        300.0, "--max-clock-skew", help="Refuse (and count) messages dated more than this many seconds ahead of ours"
    ),
    ng112: Path | None = typer.Option(
        None, "--ng112", help="NG112 forwarding config (YAML); off when absent (the default)"
    ),
    command_key: Path | None = typer.Option(
        None,
        "--command-key",
        help="Ed25519 private key (fleet command.key): sign every command (default: none, commands go unsigned "
        "and nodes that verify signatures refuse them)",
    ),
    operator_token: str = typer.Option(
        "",
        "--operator-token",
        envvar="S4EDGE_OPERATOR_TOKEN",
        help="Operators send it as Authorization: Bearer <token> to ack, command nodes or decide NG112 calls "
        "(default: none, whoever reaches --http may act; warned about off loopback)",
    ),
    operator_token_file: Path | None = typer.Option(
        None,
        "--operator-token-file",
        help="Read the operator token from this file (keeps it out of `ps`; default: none)",
    ),
    log_format: str = typer.Option("text", "--log-format", help="text, or json (one object per line)"),
    broker_log: Path | None = typer.Option(
        None,
        "--broker-log",
        help="mosquitto's log file: count refused connections (s4edge_broker_auth_failures_total; default: none, "
        "not counted)",
    ),
    tiles: str = typer.Option(
        "",
        "--tiles",
        help="XYZ tile URL for the console's map, e.g. https://tiles.example/{z}/{x}/{y}.png; "
        "none (the default): a plain background, and the page fetches nothing from outside",
    ),
    tiles_attribution: str = typer.Option(
        "", "--tiles-attribution", help="The tile server's credit line, shown on the map (default: none)"
    ),
    telemetry_retention_days: float = typer.Option(
        7.0, "--telemetry-retention-days", min=0.01, help="Keep the sensor trends (1-minute buckets) this long"
    ),
    incident_retention_days: float | None = typer.Option(
        None,
        "--incident-retention-days",
        min=1.0,
        help="Delete an ended incident (its alerts, acknowledgement and NG112 calls) this many days after its last "
        "alert. Absent (the default): incidents are kept for good. Set it to the time your rules ask you to keep "
        "emergency records",
    ),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="Ingest processes, each with its own MQTT client in one $share group (1: ingest in this process). "
        "0 (the default): one per core with PostgreSQL, 2 with SQLite. On a broker that makes the username the "
        'client id, give each its own: --username NAME-w{worker} (docs/architecture.md, "Ingest workers")',
    ),
) -> None:
    """Run the aggregator until SIGINT/SIGTERM."""
    from sqlalchemy.exc import SQLAlchemyError

    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig, ListenError
    from s4edge.cloud_sync.aggregator.broker import BrokerConfig, BrokerError, BrokerFileError, may_lack_mqtt5
    from s4edge.cloud_sync.aggregator.console_api import TileUrlError, check_tile_url
    from s4edge.cloud_sync.aggregator.store_url import StoreUrlError, check_store_url, probe_store, store_problem
    from s4edge.cloud_sync.aggregator.workers import default_workers, one_identity
    from s4edge.cloud_sync.ng112.policy import Ng112ConfigError, load_config

    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r}: text or json", param_hint="--log-format")
    if writer not in ("", "process", "thread"):
        raise typer.BadParameter(f"{writer!r}: process or thread", param_hint="--writer")
    if log_format == "json":
        logging.basicConfig(level=logging.INFO, handlers=[json_handler()], force=True)
        os.environ[LOG_FORMAT_ENV] = "json"  # for the writer process, which inherits it
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_store_url(db, db_schema or None)
    except StoreUrlError as exc:
        typer.echo(f"error: --db {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        broker_config = BrokerConfig(
            broker,
            ca_file=ca_file or None,
            cert_file=cert_file or None,
            key_file=key_file or None,
            username=username or None,
            password=password or None,
        )
    except BrokerError as exc:
        typer.echo(f"error: {'' if isinstance(exc, BrokerFileError) else '--broker: '}{exc}", err=True)
        raise typer.Exit(2) from None
    if password_file is not None:
        broker_config = dataclasses.replace(broker_config, password=_broker_password(broker_config, password_file))
    try:
        ng112_config = load_config(ng112) if ng112 is not None else None
    except Ng112ConfigError as exc:
        typer.echo(f"error: --ng112: {exc}\n(check it with `s4edge ng112 check-config FILE`)", err=True)
        raise typer.Exit(2) from None
    host, port = _host_port(http)
    try:
        check_tile_url(tiles)
    except TileUrlError as exc:
        typer.echo(f"error: --tiles {exc}", err=True)
        raise typer.Exit(2) from None
    defaulted = not workers
    chosen_writer = writer
    if not workers:
        workers = default_workers(db)
        if workers > 1 and one_identity(broker_config):
            typer.echo(
                "note: one broker identity for every ingest worker would make them take each other's session "
                "over on the fleet's broker: ingest runs in this process. For a worker per core, give each its "
                "own (`s4edge fleet aggregator-credentials --workers N`, then --username NAME-w{worker}), "
                "or --workers N where the broker keeps client ids apart from usernames",
                err=True,
            )
            workers = 1
    writer = writer or ("thread" if workers > 1 else "process")
    if workers > 1 and protocol == "3.1.1":
        typer.echo(
            "error: --workers share the fleet through MQTT 5 shared subscriptions: not with --protocol 3.1.1", err=True
        )
        raise typer.Exit(2)
    try:
        broker_config.check_files(workers)
    except BrokerFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for expiring in broker_config.expiry_warnings(datetime.now(UTC), workers):
        typer.echo(f"warning: {expiring}", err=True)
    token = _operator_token(operator_token, operator_token_file)
    if token is None and not _loopback(host):
        typer.echo(
            f"warning: --http {http} is reachable from the network and has no operator token: anyone who can "
            "reach it can acknowledge alerts and send signed commands; set --operator-token-file",
            err=True,
        )
    config = AggregatorConfig(
        broker=broker_config,
        db_url=db,
        db_schema=db_schema or None,
        sqlite_sync=sqlite_sync,
        writer=writer,
        http_host=host,
        http_port=port,
        group=group or None,
        client_id=client_id or None,
        protocol=protocol,
        heartbeat_interval_s=heartbeat_interval,
        stale_factor=stale_factor,
        max_clock_skew_s=max_clock_skew,
        command_key=command_key,
        broker_log=broker_log,
        operator_token=token,
        tiles_url=tiles or None,
        tiles_attribution=tiles_attribution,
        telemetry_retention_s=telemetry_retention_days * 86400,
        incident_retention_s=None if incident_retention_days is None else incident_retention_days * 86400,
        workers=workers,
    )
    tries = [config]
    if defaulted and workers > 1 and protocol == "auto":  # a broker that speaks only 3.1.1 has no shared subscriptions
        tries.append(dataclasses.replace(config, workers=1, writer=chosen_writer or "process"))
    for attempt, config in enumerate(tries, 1):
        forwarder = None
        try:
            aggregator = Aggregator(config)
            # an unusable store is named before any message is taken; one read-only for now is not fatal
            if (warning := probe_store(aggregator.store.engine, db)) is not None:
                logging.getLogger("s4edge.aggregator").warning("%s", warning)
            if ng112_config is not None:
                from s4edge.cloud_sync.ng112.service import attach  # the ng112 extra's lxml: only to forward

                forwarder = attach(aggregator, ng112_config)
            aggregator.start()
            break
        except (
            StoreUrlError,
            SQLAlchemyError,
            ModuleNotFoundError,
            BrokerError,
            OSError,
            RuntimeError,
            ValueError,
        ) as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name != "psycopg":
                raise  # s4edge.cli names the extra that installs it
            if forwarder is not None:
                forwarder.stop()
            if isinstance(exc, BrokerError) and attempt < len(tries) and may_lack_mqtt5(str(exc)):
                typer.echo(f"note: {exc}; ingest runs in this process instead (MQTT 3.1.1)", err=True)
                continue
            store = isinstance(exc, StoreUrlError | SQLAlchemyError | ModuleNotFoundError)
            if isinstance(exc, ListenError):
                typer.echo(
                    f"aggregator did not start: --http {http}: {exc.strerror}: another program (another "
                    "aggregator?) listens there, or the address is not this machine's; choose another --http",
                    err=True,
                )
                raise typer.Exit(1) from None
            typer.echo(f"aggregator did not start: {f'--db {store_problem(db, exc)}' if store else exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"aggregator: {aggregator.url} (dashboard at /, API at /api, metrics at /metrics)", err=True)
    if broker_config.tls and (expiring_broker := broker_config.expiry_warning(datetime.now(UTC))) is not None:
        typer.echo(f"warning: {expiring_broker}", err=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    if forwarder is not None:
        forwarder.stop()
    aggregator.stop()
