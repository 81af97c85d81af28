"""The node's composition root: config in, a running node out.

Alerts go to the on-disk outbox before anything else happens to them; the forwarder
sends them when the uplink is connected. Each source runs in its own thread through
the plugin registry; a source that raises is restarted with backoff and the node
keeps running. Commands arrive on ``cmd/+`` and are answered on ``cmd_result``.
Under systemd (Type=notify) the node says READY=1 once started, WATCHDOG=1 from its tick
loop while every thread it needs is alive and making progress (``edge.supervision``),
and STOPPING=1 on the way out. No exception ends a thread: each loop logs what it
survives with a rate limit and goes on, with backoff where retrying at once is futile.
"""

from __future__ import annotations

import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import ValidationError

from s4edge.cloud_sync.broker_url import broker_endpoint
from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.messages import (
    Alert,
    Command,
    CommandResult,
    Heartbeat,
    Location,
    Measurement,
    MessageError,
    Receipt,
    Status,
    Telemetry,
    decode_from,
    encode,
    new_id,
    topic,
    utc_now,
)
from s4edge.cloud_sync.outbox import TELEMETRY, Outbox, is_disk_full
from s4edge.cloud_sync.uplink import Backoff, Forwarder, MqttUplink, Uplink, UplinkSettings
from s4edge.edge.alerts import AlertDraft, AlertNotStored, IncidentBook
from s4edge.edge.config import ConfigError, config_digest, parse_config_text
from s4edge.edge.health import FaultLog, Health, ServiceNotifier, Vitals
from s4edge.edge.incident_journal import IncidentJournal, journal_path
from s4edge.edge.sources import AlertSource, SourceContext, build_source
from s4edge.edge.supervision import Watchdog, alive
from s4edge.edge.unstored_alerts import UnstoredAlerts

if TYPE_CHECKING:  # loaded when a command needs it: signatures imports cryptography
    from s4edge.edge.signatures import CommandVerifier

log = logging.getLogger(__name__)
Inbound = TypeVar("Inbound", Command, Receipt)  # what the centre sends a node


@runtime_checkable
class ModelSwap(Protocol):
    """A source that can swap its model at runtime (the vision source implements it). It keeps
    each swap beside the outbox, so that a reload or a restart runs the swapped model again."""

    def swap_model(self, args: dict[str, Any]) -> str: ...

    def keep_swaps(self, outbox: Path) -> None:
        """Before it runs: keep swaps beside ``outbox``, and run the model one kept there names."""


def _check_tls_files(m: Any) -> None:
    """The CA, certificate and key files read as TLS reads them, at start: a missing or broken
    one was an outbox error from deep in the uplink, and systemd restarted the agent for ever.
    Over plain mqtt:// or ws:// they are never read, and not checked."""
    import ssl

    if not broker_endpoint(m.url).tls:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for key in ("ca_file", "cert_file"):
        if getattr(m, key) is None:
            continue
        try:
            if key == "ca_file":
                context.load_verify_locations(cafile=str(m.ca_file))
            else:
                context.load_cert_chain(str(m.cert_file), str(m.key_file) if m.key_file else None)
        except ssl.SSLError as exc:  # before OSError, whose subclass it is
            what = "certificate" if key == "ca_file" else "certificate and key (mqtt.key_file)"
            raise ConfigError(f"mqtt.{key}: {getattr(m, key)} is not a PEM {what} ({exc.reason or exc})") from None
        except OSError as exc:
            raise ConfigError(f"mqtt.{key}: cannot read {exc.filename or getattr(m, key)} ({exc.strerror})") from None


def uplink_settings(config: Any) -> UplinkSettings:
    m = config.mqtt
    password = m.password
    if m.password_file is not None:
        try:
            password = Path(m.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {m.password_file} ({exc.strerror})") from None
    _check_tls_files(m)
    return UplinkSettings(
        url=m.url,
        client_id=m.client_id or f"s4edge-{config.site}-{config.node_id}",
        protocol=m.protocol,
        username=m.username,
        password=password,
        ca_file=m.ca_file,
        cert_file=m.cert_file,
        key_file=m.key_file,
        keepalive_s=m.keepalive_s,
        session_expiry_s=m.session_expiry_s,
    )


def _version() -> str:
    try:
        return metadata.version("s4edge")
    except metadata.PackageNotFoundError:
        return "unknown"


# a build that failed for a device the running sources may hold (EBUSY, errno 16, "in use")
_DEVICE_HELD = re.compile(r"busy|in use|errno 16", re.IGNORECASE)
SOURCE_HEALTHY_S = 60.0  # a source that ran this long before it failed restarts after 1 s again, its backoff reset


@dataclass
class _Running:
    source: AlertSource
    config: Any  # the source's part of the node config, as built
    thread: threading.Thread
    stop: threading.Event
    ended: threading.Event  # run() returned (a replay that finished) or the source was stopped

    def progress(self) -> float | None:
        """A source stamps no progress of its own: it is well while its thread runs."""
        return time.monotonic() if self.ended.is_set() or self.thread.is_alive() else None


class Node:
    def __init__(
        self,
        config: Any,
        *,
        uplink: Uplink | None = None,
        base_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        self.clock = clock
        self.boot_id = new_id()
        self.started_at = utc_now()
        self._started = clock()
        self.verifier = self._load_verifier(config)  # a bad key file stops the node before it opens anything
        self.outbox = Outbox(config.outbox.path, config.outbox.telemetry_max)
        self.journal = IncidentJournal(journal_path(Path(config.outbox.path)))
        self.unstored = UnstoredAlerts(self._store, str(config.outbox.path))  # a full disk's alerts, in memory
        self.health = Health()
        self.faults = FaultLog()  # every fault and recovery published goes to the log too
        self.vitals = Vitals(config.heartbeat.thermal_zone)
        self.notifier = ServiceNotifier.from_environment()
        self.watchdog = Watchdog(self.notifier)
        self.uplink: Uplink = uplink or MqttUplink(uplink_settings(config), will=lambda: self._status("offline"))
        self.forwarder = Forwarder(
            self.outbox,
            self.uplink,
            receipt_timeout_s=config.outbox.receipt_timeout_s,
            receipt_backoff_max_s=config.outbox.receipt_backoff_max_s,
        )
        self.book = self._new_book(config)
        self.rejected: dict[str, int] = {}
        self._running: list[_Running] = []
        self._reloading = threading.Lock()
        self._stop = threading.Event()
        self._telemetry_sent: dict[str, float] = {}
        self._telemetry_failures = FailureLog(
            log, f"storing telemetry in {config.outbox.path} (dropped and counted meanwhile)", expected=is_disk_full
        )
        self._announced_degraded: list[str] = []
        self._next_beat = float("-inf")
        self._commands: queue.Queue[Command] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.uplink.on_connect(self.announce)
        self.uplink.subscribe(self._topic("cmd/+"), self._on_command)
        self.uplink.subscribe(self._topic("receipt"), self._on_receipt)

    # -- messages --------------------------------------------------------------------

    def _topic(self, suffix: str) -> str:
        return topic(self.config.site, self.config.node_id, suffix)

    def _status(self, state: Literal["online", "offline"]) -> tuple[str, bytes]:
        status = Status(
            node_id=self.config.node_id,
            site=self.config.site,
            seq=self._unstored_seq(),
            state=state,
            boot_id=self.boot_id,
            started_at=self.started_at,
            version=_version(),
            config_digest=self.digest,
            degraded=self.health.degraded(),
        )
        return self._topic("status"), encode(status)

    def _unstored_seq(self) -> int:
        """The seq of a status or heartbeat, which are never stored: when the disk is full,
        one that cannot be reserved on disk comes from memory, so that they still go out."""
        try:
            return self.outbox.next_seq()
        except sqlite3.Error:
            return self.outbox.next_seq(durable=False)
        finally:
            self._report_outbox()  # the reservation probes the disk now and then

    def _report_outbox(self) -> None:
        """The outbox's fault, if any, and the alerts it could not store yet, in health."""
        self.health.set_outbox(self.outbox.failure, unstored_alerts=len(self.unstored))

    @property
    def digest(self) -> str:
        # published in the retained status: an inline password must not be guessable from it
        return config_digest(self.config.model_dump_json(exclude={"mqtt": {"password"}}))

    def announce(self) -> None:
        """Retained ``online`` status with the boot record; runs on every (re)connect,
        and whenever the set of degraded parts changes."""
        self._announced_degraded = self.health.degraded()
        status_topic, payload = self._status("online")
        self.uplink.publish(status_topic, payload, qos=1, retain=True)

    def publish_alert(self, draft: AlertDraft) -> Alert:
        """Stamp who/where/seq on a draft and store it durably; returns the stored alert.
        Raises AlertNotStored when the outbox cannot store it now (nothing is kept: the
        sources' alerts go through ``_emit``, which keeps them)."""
        return self.unstored.store(draft, self._stamp(draft))

    def _stamp(self, draft: AlertDraft) -> Alert:
        loc = self.config.location
        where = Location(lat=loc.lat, lon=loc.lon, zone=loc.zone)
        return draft.stamped(self.config.node_id, self.config.site, where, self.config.status)

    def _store(self, draft: AlertDraft, alert: Alert) -> Alert:
        """Put a stamped alert in the outbox with the next ``seq``; returns it as stored."""
        stored = alert

        def stamp(seq: int) -> bytes:
            nonlocal stored
            stored = alert.model_copy(update={"seq": seq})
            return encode(stored)

        # it leaves the outbox only when the aggregator's receipt names its id
        self.outbox.put_next(self._topic("alert"), stamp, qos=1, kind="alert", receipt_id=alert.id)
        self.journal.note(draft)  # stored: an incident a crash leaves open is ended at the next start
        self.faults.alert(draft)  # stored: a camera or sensor fault shows on the console as well
        return stored

    def _on_receipt(self, topic_name: str, payload: bytes) -> None:
        """The aggregator stored these alerts: they may leave the outbox. Ids of alerts
        confirmed before (a receipt sent twice) or never ours delete nothing."""
        message = self._inbound(topic_name, payload, Receipt)
        if message is None:
            return
        # paho's network thread must not wait for an fsync; a delete lost in a crash only means a resend
        self.outbox.confirm(message.alert_ids, wait=False)

    def _emit(self, draft: AlertDraft) -> None:
        """A source's alert: stored, or kept in memory while the outbox cannot store it (a full
        disk), and stored in order once it can. AlertNotStored only when memory holds as many
        as it keeps; a fault of the node's outbox either way, never the source's."""
        try:
            self.unstored.put(draft, self._stamp(draft))
        except (ValidationError, MessageError) as exc:
            log.error("alert %s/%s refused by the wire contract: %s", draft.kind, draft.state, exc)
            self.health.set("alerts", f"fault: alert refused ({draft.kind})")
            return
        finally:
            if len(self.unstored):
                self._report_outbox()  # the disk at fault at once, not at the next tick
        if self.health.states().get("alerts", "ok") != "ok":
            self.health.set("alerts", "ok")  # the fault clears with the next alert that goes through

    def _telemetry(self, source: str, readings: list[Measurement]) -> None:
        now = self.clock()
        last = self._telemetry_sent.get(source)
        if not readings or (last is not None and now - last < self.config.telemetry.interval_s):
            return
        self._telemetry_sent[source] = now
        for start in range(0, len(readings), 64):  # a Telemetry message holds at most 64 readings
            try:
                self.outbox.put_next(
                    self._topic("telemetry"),
                    partial(self._telemetry_payload, readings[start : start + 64]),
                    qos=0,
                    kind=TELEMETRY,
                )
            except sqlite3.Error as exc:  # fire-and-forget: a full disk drops it, the source goes on
                self._telemetry_failures.failed(exc)
                return
        self._telemetry_failures.ok()

    def _telemetry_payload(self, readings: list[Measurement], seq: int) -> bytes:
        return encode(Telemetry(node_id=self.config.node_id, site=self.config.site, seq=seq, readings=readings))

    def _telemetry_of(self, source: str) -> Callable[[list[Measurement]], None]:
        return lambda readings: self._telemetry(source, readings)

    def heartbeat(self) -> Heartbeat:
        vitals = self.vitals.read()
        vision = self.health.vision()
        beat = Heartbeat(
            node_id=self.config.node_id,
            site=self.config.site,
            seq=self._unstored_seq(),
            uptime_s=self.clock() - self._started,
            cpu_percent=vitals.cpu_percent,
            mem_mb=vitals.mem_mb,
            soc_temp_c=vitals.soc_temp_c,
            camera_fps=vision.camera_fps,
            inference_ms=vision.inference_ms,
            dropped_frames=vision.dropped_frames,
            outbox_depth=_unless_failing(self.outbox.depth),
            telemetry_dropped=_unless_failing(self.outbox.dropped),
            sensors=self.health.states(),
        )
        if self.uplink.connected.is_set():  # a stale heartbeat is worthless: never queued
            self.uplink.publish(self._topic("heartbeat"), encode(beat), qos=0)
        return beat

    # -- sources ---------------------------------------------------------------------

    def _new_book(self, config: Any) -> IncidentBook:
        return IncidentBook(
            self._emit,
            status=config.status,
            update_interval_s=config.alerts.update_interval_s,
            stale_after_s=config.alerts.stale_after_s,
            max_duration_s=config.alerts.max_duration_s,
            hold_s=config.alerts.hold_s,
            cooldown_s=config.alerts.cooldown_s,
        )

    def _build_sources(self, configs: list[Any], book: IncidentBook) -> list[tuple[AlertSource, Any]]:
        built: list[tuple[AlertSource, Any]] = []
        for source_config in configs:
            try:
                built.append((build_source(source_config, book), source_config))
            except Exception as exc:  # a model that will not pull, a GPIO pin in use, …: all refuse the config
                for source, _ in built:  # the ones built so far let go of their buses and lines
                    _release(source)
                name = getattr(source_config, "name", source_config.type)
                raise ConfigError(f"sources: {source_config.type} source {name!r}: {exc}") from None
        return built

    def _start_sources(self, sources: list[tuple[AlertSource, Any]]) -> None:
        for source, source_config in sources:
            if isinstance(source, ModelSwap):  # here, not at build: a refused reload must not touch a kept swap
                source.keep_swaps(Path(self.config.outbox.path))
            stop = threading.Event()
            ctx = SourceContext(
                emit=self._emit,
                telemetry=self._telemetry_of(source.name),
                health=self.health.of_source(source.name),
                stop=stop,
                clock=self.clock,
            )
            ended = threading.Event()
            thread = threading.Thread(
                target=self._supervise, args=(source, ctx, ended), name=f"source-{source.name}", daemon=True
            )
            running = _Running(source, source_config, thread, stop, ended)
            self.watchdog.watch(thread.name, running.progress)
            thread.start()
            self._running.append(running)

    def _stop_sources(self, which: list[_Running] | None = None) -> None:
        """Stop ``which`` of the running sources (all by default), all at once, and let go of them."""
        stopping = list(self._running) if which is None else which
        for running in stopping:
            running.stop.set()
        for running in stopping:
            running.thread.join(10)
            self.watchdog.forget(running.thread.name)
            _release(running.source)
            self.health.forget(running.source.name)
        self._running = [running for running in self._running if running not in stopping]

    def _supervise(self, source: AlertSource, ctx: SourceContext, ended: threading.Event) -> None:
        backoff = Backoff()
        failures = FailureLog(log, f"source {source.name} (restarted with backoff)")
        while not ctx.stop.is_set():
            started = time.monotonic()
            try:
                self.health.set(source.name, "running")
                source.run(ctx)
                break
            except AlertNotStored:
                pass  # the outbox's fault, logged and reported as the outbox's: not this source's
            except Exception as exc:
                failures.failed(exc)
                self.health.set(source.name, f"failed: {exc}")
            if time.monotonic() - started >= SOURCE_HEALTHY_S:
                backoff.reset()  # a fault after a long good run is a new fault, not the last one again
            ctx.stop.wait(backoff.next())
        ended.set()

    # -- commands --------------------------------------------------------------------

    def _on_command(self, topic_name: str, payload: bytes) -> None:
        message = self._inbound(topic_name, payload, Command)
        if message is not None:
            self._commands.put(message)

    def _inbound(self, topic_name: str, payload: bytes, kind: type[Inbound]) -> Inbound | None:
        """The ``kind`` message on an inbound topic, or None when it is refused (counted and logged)."""
        try:
            message = decode_from(topic_name, payload)
        except MessageError as exc:
            self._reject(exc.reason, f"{topic_name}: {exc.detail}")
            return None
        if not isinstance(message, kind):
            self._reject(f"not_a_{kind.__name__.lower()}", f"{topic_name}: {message.type} message")
            return None
        return message

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.rejected[reason] == 1 or self.rejected[reason] % 100 == 0:
            log.warning("refused inbound message (%s, %d so far): %s", reason, self.rejected[reason], detail)

    def execute(self, command: Command) -> CommandResult:
        ok, detail, data = self._decide(command)
        result = CommandResult(
            node_id=self.config.node_id,
            site=self.config.site,
            seq=0,
            cmd_id=command.id,
            name=command.name,
            ok=ok,
            detail=detail[:1024],
            data=data,
        )
        self.outbox.put_next(
            self._topic("cmd_result"), lambda seq: encode(result.model_copy(update={"seq": seq})), kind="cmd_result"
        )
        return result

    @staticmethod
    def _load_verifier(config: Any) -> CommandVerifier | None:
        path = config.commands.verify_key
        if path is None:
            return None
        from s4edge.edge.signatures import CommandVerifier

        return CommandVerifier.load(path)

    def _decide(self, command: Command) -> tuple[bool, str, dict[str, Any]]:
        # the signature first: an unsigned or forged command must not even burn its id
        problem = self.verifier.problem(command) if self.verifier is not None else None
        if problem is not None:
            self._reject("bad_signature", f"{command.name} {command.id} from {command.issuer!r}: {problem}")
            return False, f"bad signature: {problem}", {}
        # imported on the first command: signatures loads cryptography (about 7 MB resident)
        from s4edge.edge.signatures import expiry_problem

        if (expiry := expiry_problem(command, self.config.commands.max_expiry_s, utc_now())) is not None:
            return False, expiry, {}
        if command.issuer not in self.config.commands.issuers:
            return False, f"issuer {command.issuer!r} is not in commands.issuers {self.config.commands.issuers}", {}
        if not self.outbox.remember_command(command.id, command.expires.timestamp()):
            return False, f"command {command.id} was already executed (replay refused)", {}
        if command.name == "ping":
            return True, "pong", {"uptime_s": round(self.clock() - self._started, 3)}
        if command.name == "rebirth":
            self.announce()
            return True, "status republished", {"config_digest": self.digest}
        if command.name == "reload_config":
            text = command.args.get("config")
            if not isinstance(text, str):
                return False, "args.config must hold the node config as YAML text", {}
            try:
                self.reload(text)
            except ConfigError as exc:
                return False, f"config refused, the running one stays: {exc}", {}
            except OSError as exc:  # a device of the new config failing as it opened
                return False, f"config not applied, the running one stays: {exc}", {}
            return True, "config reloaded", {"config_digest": self.digest}
        swappers = [r.source for r in self._running if isinstance(r.source, ModelSwap)]
        if not swappers:
            return False, "no vision source", {}
        try:
            return True, "; ".join(s.swap_model(dict(command.args)) for s in swappers), {}
        except (ValueError, OSError) as exc:
            return False, f"model swap refused: {exc}", {}

    def reload(self, text: str, origin: str = "reload_config") -> None:
        """Apply a new config without dropping the uplink; raises ConfigError and keeps the old one.
        Errors name ``origin``: the command, or the file a SIGHUP applies again.

        A source whose part of the config is unchanged runs on, its alarms, warm-ups and CO
        exposure and all, while the incident lifecycle settings stay too: rebuilt from zero,
        an open gas or CO alarm read its first sample as no alarm and ended (a PSAP Cancel),
        and a CO alarm took minutes of exposure to come back, after any reload."""
        with self._reloading:  # a SIGHUP and a reload_config command may come at once
            self._reload(text, origin)

    def _check_password_kept(self, new: Any, origin: str) -> None:
        """The broker password is read from ``mqtt.password_file`` once, at start. Rotated there
        (``s4edge provision`` again), a reload that said "applied" kept the old one, and the node
        stayed "Not authorized" for good: refused, with what to do instead."""
        running = getattr(self.uplink, "settings", None)
        if new.mqtt.password_file is None or not isinstance(running, UplinkSettings):
            return
        if uplink_settings(new).password != running.password:
            raise ConfigError(
                f"{origin}: the broker password in {new.mqtt.password_file} changed; the agent reads it "
                "at start: restart it to use the new one (sudo systemctl restart s4edge-agent)"
            )

    def _reload(self, text: str, origin: str) -> None:
        new = parse_config_text(text, origin, self.base_dir)
        for key in ("node_id", "site", "mqtt", "outbox"):
            if getattr(new, key) != getattr(self.config, key):
                raise ConfigError(f"{origin}: {key} cannot change at runtime; restart the agent for that")
        self._check_password_kept(new, origin)
        lifecycle_changed = (new.alerts, new.status) != (self.config.alerts, self.config.status)
        book = self._new_book(new) if lifecycle_changed else self.book
        verifier = self._load_verifier(new)
        wanted: list[Any] = getattr(new, "sources", [])  # NodeConfig's, made per set of plugins
        kept = [] if lifecycle_changed else [r for r in self._running if r.config in wanted]
        kept_configs = [r.config for r in kept]
        changed = [c for c in wanted if c not in kept_configs]
        retiring = [r for r in self._running if r not in kept]
        try:
            sources = self._build_sources(changed, book)
        except ConfigError as exc:
            if not retiring or not _DEVICE_HELD.search(str(exc)):
                raise  # the running sources were never touched: they run on, alarms and all
            # A device the running sources hold (a GPIO line) opens only once they let go:
            # stop them and try again; if the new config still fails, the old one comes back.
            self._stop_sources(retiring)
            try:
                sources = self._build_sources(changed, book)
            except Exception:  # a ConfigError, or a device failing as it opens: the old one comes back
                self._restore([r.config for r in retiring])
                raise
        else:
            self._stop_sources(retiring)
        self.verifier = verifier
        self.vitals = Vitals(new.heartbeat.thermal_zone)
        if lifecycle_changed:
            try:
                self.book.clear_all(self.clock(), "config reloaded")
            except Exception as exc:  # the outbox refusing the ends (a full disk) must not leave no sources
                log.warning("config reloaded, but the open incidents' ends could not be stored: %s", exc)
            self.book = book
        self.config = new
        self._start_sources(sources)
        self.announce()

    def _restore(self, configs: list[Any]) -> None:
        """Start again the sources a refused reload stopped; one that cannot be built again (its
        file gone since) is a fault in health, not a node that silently detects nothing."""
        for source_config in configs:
            try:
                self._start_sources(self._build_sources([source_config], self.book))
            except ConfigError as exc:
                name = getattr(source_config, "name", source_config.type)
                log.error("source %s could not be started again after a refused reload: %s", name, exc)
                self.health.set(name, f"failed: not running since a refused reload: {exc}")

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._commands.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.execute(command)
            except Exception as exc:
                if not is_disk_full(exc):
                    log.exception("command %s (%s) failed", command.name, command.id)
                    continue
                # an expected condition, as for telemetry: one line naming the disk to free
                log.warning(
                    "command %s (%s) failed: %s is on a full disk (%s): make room there; the aggregator "
                    "gets no result for it",
                    command.name,
                    command.id,
                    self.outbox.path,
                    exc,
                )

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self._end_leftover_incidents()
        sources = self._build_sources(self.config.sources, self.book)
        self.uplink.start()
        self.forwarder.start()
        commands = threading.Thread(target=self._command_loop, name="commands", daemon=True)
        tick = threading.Thread(target=self._tick_loop, name="node-tick", daemon=True)
        self.watchdog.watch("mqtt-uplink", self.uplink.progress)
        self.watchdog.watch("outbox-forwarder", alive(self.forwarder.alive))
        self.watchdog.watch("outbox-writer", alive(self.outbox.writing))  # every put waits on it
        # a command may pull a model for minutes: watched for being alive, not for progress
        self.watchdog.watch("commands", alive(commands.is_alive))
        for thread in (commands, tick):  # the tick loop sends the ping: it counts by sending it
            thread.start()
            self._threads.append(thread)
        self._start_sources(sources)
        self.notifier.ready()

    def _end_leftover_incidents(self) -> None:
        """End what the last run left open (a crash, a power cut): no book remembers it now."""
        for end in self.journal.leftover():
            try:
                self.unstored.put(end, self._stamp(end))  # a full disk: kept, and stored once there is room
            except Exception as exc:  # noted still: ended at the next start
                log.warning("incident %s, left open at the last stop, not ended now: %s", end.incident, exc)

    def _tick_loop(self) -> None:
        # Each duty fails on its own: a broken incident book or a full disk must stop
        # neither the heartbeat nor the watchdog ping.
        duties: list[tuple[FailureLog, Callable[[], None]]] = [
            (FailureLog(log, "storing the alerts kept in memory"), self.unstored.retry),
            (FailureLog(log, "incident expiry", expected=_outbox_full), lambda: self.book.expire(self.clock())),
            (FailureLog(log, "heartbeat", expected=_outbox_full), self._heartbeat_when_due),
            (FailureLog(log, "status update", expected=_outbox_full), self._announce_faults),
            (FailureLog(log, "fault log"), self._log_degraded),
        ]
        while not self._stop.wait(min(1.0, self.config.heartbeat.interval_s)):
            for failures, duty in duties:
                try:
                    duty()
                except Exception as exc:
                    failures.failed(exc)
                else:
                    failures.ok()
            # systemd restarts the agent when these stop (WatchdogSec in the unit)
            self.watchdog.ping()

    def _heartbeat_when_due(self) -> None:
        if self.clock() >= self._next_beat:
            self._next_beat = self.clock() + self.config.heartbeat.interval_s
            self.heartbeat()

    def _log_degraded(self) -> None:
        """The parts the status lists as degraded, on the console whether or not it is connected."""
        self.faults.parts(self.health.degraded_states(), self.health.states())

    def _announce_faults(self) -> None:
        """A camera, sensor or outbox fault shows in the retained status too."""
        self._report_outbox()
        if self.uplink.connected.is_set() and self.health.degraded() != self._announced_degraded:
            self.announce()

    def close(self, flush_s: float = 5.0) -> None:
        """Stop sources, send what is queued (up to ``flush_s``), publish ``offline``, disconnect."""
        self.notifier.stopping()
        self._stop_sources()
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.unstored.retry()
        if lost := self.unstored.lost():
            named = ", ".join(f"{d.kind} {d.state} of incident {d.incident}" for d in lost[:20])
            log.error(
                "%d alerts kept in memory are lost with this stop: the outbox could not store them (%s): %s",
                len(lost), self.outbox.failure, named,
            )  # fmt: skip
        if self.uplink.connected.is_set():
            self.forwarder.flush(flush_s)
        self.forwarder.stop()
        self.uplink.close(last=self._status("offline"))
        self.outbox.close()

    def run(
        self, stop: threading.Event, reread: threading.Event | None = None, config_file: Path | None = None
    ) -> None:
        """Run until ``stop``; each time ``reread`` is set (SIGHUP), apply ``config_file`` again."""
        self.start()
        try:
            while not stop.wait(0.5):
                if reread is not None and reread.is_set() and config_file is not None:
                    reread.clear()
                    self._reload_file(config_file)
        finally:
            self.close()

    def _reload_file(self, path: Path) -> None:
        try:
            self.reload(path.read_text(encoding="utf-8"), origin=str(path))
        except (ConfigError, OSError, UnicodeDecodeError) as exc:  # a ConfigError names the file itself
            log.error("%s not applied, the running config stays: %s", path, str(exc).removeprefix(f"{path}: "))
            return
        log.info("%s applied", path)


def _outbox_full(exc: BaseException) -> bool:
    """A full disk, or an alert the node could not take for it: a condition, not a bug."""
    return is_disk_full(exc) or isinstance(exc, AlertNotStored)


def _unless_failing(read: Callable[[], int]) -> int | None:
    """A heartbeat figure read from the outbox, or None while the outbox cannot be read."""
    try:
        return read()
    except sqlite3.Error:
        return None


def _release(source: AlertSource) -> None:
    """Close a source that holds a bus or GPIO lines (those that hold nothing have no ``close``)."""
    close = getattr(source, "close", None)
    if close is not None:
        close()
