"""Broker → store: subscribe, validate, de-duplicate, commit, then acknowledge.

paho's network thread only queues what arrives; one writer thread takes what is queued
(up to ``batch_max``, gathering a burst for up to ``linger_s``), validates it, commits
it in one transaction and only then sends the PUBACKs (``manual_ack``). A crash between
commit and ack makes the broker redeliver, and the primary key on ``alerts.id`` drops the copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from cloud_sync.aggregator.alert_rows import AlertRows
from cloud_sync.aggregator.broker import BrokerConfig, BrokerError
from cloud_sync.aggregator.events import EventBus
from cloud_sync.aggregator.metrics import IngestMetrics, RejectionLog
from cloud_sync.aggregator.store import Store
from cloud_sync.aggregator.views import alert_record
from cloud_sync.messages import (
    Alert,
    Command,
    CommandResult,
    Heartbeat,
    MessageError,
    Status,
    Telemetry,
    decode_from,
    fleet_filter,
)

log = logging.getLogger("s4edge.aggregator")

SUFFIXES = ("status", "heartbeat", "telemetry", "alert", "cmd_result")
V5_PROBE_S = 3.0
LINGER_S = 0.02  # the most a burst's first message waits for the rest of its batch
LINGER_QUIET_S = 0.002  # a batch stops gathering when nothing arrived for this long
QOS0_BACKLOG = 20000  # heartbeats and telemetry held for the writer before new ones are shed

AlertHook = Callable[[Alert], object]


@dataclass(frozen=True, slots=True)
class Received:
    topic: str | None
    payload: bytes
    qos: int
    mid: int
    generation: int  # which connection delivered it: a mid is only meaningful on that connection
    at: datetime
    t0: float


@dataclass
class Batch:
    alerts: dict[str, tuple[Alert, datetime]] = field(default_factory=dict)
    statuses: dict[tuple[str, str], tuple[Status, datetime]] = field(default_factory=dict)
    beats: dict[tuple[str, str], tuple[Heartbeat, datetime]] = field(default_factory=dict)
    readings: dict[tuple[str, str], tuple[Telemetry, datetime]] = field(default_factory=dict)
    results: list[tuple[CommandResult, datetime]] = field(default_factory=list)
    duplicates_in_batch: int = 0

    def add(self, message: Status | Heartbeat | Telemetry | Alert | Command | CommandResult, at: datetime) -> None:
        key = (message.site, message.node_id)
        if isinstance(message, Alert):
            if message.id in self.alerts:
                self.duplicates_in_batch += 1  # the first copy wins, as it would across batches
            else:
                self.alerts[message.id] = (message, at)
        elif isinstance(message, CommandResult):
            self.results.append((message, at))
        # Only the newest status/heartbeat/telemetry per node matters.
        elif isinstance(message, Status):
            if key not in self.statuses or self.statuses[key][0].ts <= message.ts:
                self.statuses[key] = (message, at)
        elif isinstance(message, Heartbeat):
            if key not in self.beats or self.beats[key][0].ts <= message.ts:
                self.beats[key] = (message, at)
        elif isinstance(message, Telemetry) and (key not in self.readings or self.readings[key][0].ts <= message.ts):
            self.readings[key] = (message, at)


class Ingest:
    def __init__(
        self,
        broker: BrokerConfig,
        store: Store,
        metrics: IngestMetrics,
        *,
        client_id: str,
        group: str | None = "s4edge-aggregator",
        session_expiry_s: int = 86400,
        batch_max: int = 500,
        linger_s: float = LINGER_S,
        protocol: str = "auto",
        events: EventBus | None = None,
        rejection_log: RejectionLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if protocol not in ("auto", "5", "3.1.1"):
            raise ValueError("protocol: auto, 5 or 3.1.1")
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.client_id = client_id
        self.group = group
        self.session_expiry_s = session_expiry_s
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.linger_quiet_s = LINGER_QUIET_S
        self.protocol = protocol
        self.events = events
        self.rejections = rejection_log or RejectionLog()
        self.clock = clock
        self.on_alert_stored: list[AlertHook] = []
        self.protocol_used: MQTTProtocolVersion | None = None
        # paho's thread appends, the writer pops: deque operations are atomic, so the network
        # thread pays no lock per message; ``_arrived`` wakes an idle writer.
        self._pending: deque[Received] = deque()
        self._arrived = threading.Event()
        self._full = threading.Event()  # ``batch_max`` are waiting: stop lingering
        self._generation = 0
        self._known_nodes: set[tuple[str, str]] = set()
        self._alert_rows = AlertRows(store)
        self._received = {s: metrics.received.labels(s) for s in (*SUFFIXES, "other")}  # labels() costs a lookup
        self._stopping = threading.Event()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        order: list[MQTTProtocolVersion] = {
            "auto": [mqtt.MQTTv5, mqtt.MQTTv311],
            "5": [mqtt.MQTTv5],
            "3.1.1": [mqtt.MQTTv311],
        }[self.protocol]
        failure = ""
        for protocol in order:
            client = self.broker.client(self.client_id, protocol, manual_ack=True)
            # A 3.1.1-only broker (amqtt, the demo's) may never answer a v5 CONNECT: probe briefly.
            fallback_left = protocol != order[-1]
            failure = self._connect(client, protocol, min(timeout, V5_PROBE_S) if fallback_left else timeout)
            if not failure:
                self._client, self.protocol_used = client, protocol
                break
            if not any(word in failure for word in ("protocol", "Protocol", "closed", "no CONNACK")):
                break  # refused for another reason (credentials, ACL): a fallback would not help
        if self._client is None:
            raise BrokerError(f"could not connect to {self.broker.url}: {failure}")
        self._stopping.clear()
        self._writer = threading.Thread(target=self._write_loop, name="aggregator-ingest", daemon=True)
        self._writer.start()

    def _connect(self, client: mqtt.Client, protocol: MQTTProtocolVersion, timeout: float) -> str:
        """Connect and wait for CONNACK; return '' on success, else why it failed."""
        outcome: dict[str, str] = {}
        answered = threading.Event()

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
            if reason.is_failure:
                outcome["failure"] = f"broker refused: {reason}"
            else:
                self._on_connected(c, protocol, flags)
            answered.set()

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            if not answered.is_set():
                outcome["failure"] = f"connection closed before CONNACK ({reason})"
                answered.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = self._on_message
        properties = None
        if protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
            # MQTT 5.0 §3.1.2.11.3: caps unacked QoS 1 deliveries; two batches' worth lets the next
            # batch arrive while this one commits, and bounds what a slow store can pile up here.
            properties.ReceiveMaximum = min(65535, 2 * self.batch_max)
        try:
            client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self.broker.keepalive_s,
                clean_start=False if protocol == mqtt.MQTTv5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        client.loop_start()
        if not answered.wait(timeout):
            outcome["failure"] = f"no CONNACK within {timeout} s"
            answered.set()  # so that the disconnect below does not overwrite the reason
        if "failure" in outcome:
            client.loop_stop()
            client.disconnect()
            return outcome["failure"]
        return ""

    def _on_connected(self, client: mqtt.Client, protocol: MQTTProtocolVersion, flags: Any) -> None:
        self._generation += 1
        filters = [fleet_filter(suffix) for suffix in SUFFIXES]
        if protocol == mqtt.MQTTv5:
            if self.group:
                filters = [f"$share/{self.group}/{f}" for f in filters]
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        else:
            client.subscribe([(f, 1) for f in filters])
        log.info(
            "connected to %s as %s (MQTT %s, session present: %s)",
            self.broker.url,
            self.client_id,
            "5" if protocol == mqtt.MQTTv5 else "3.1.1",
            getattr(flags, "session_present", None),
        )

    def stop(self) -> None:
        """Commit and acknowledge what has arrived, then disconnect cleanly (the session stays)."""
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(30)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._client = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 5.0) -> bool:
        """Publish (commands); True once the broker has acknowledged it."""
        if self._client is None:
            return False
        info = self._client.publish(topic, payload, qos=qos)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    # -- receive -------------------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        if message.qos == 0 and len(self._pending) >= QOS0_BACKLOG:
            # QoS 0 is best effort: shed it rather than let memory grow. QoS 1 is bounded by
            # the broker's in-flight window (Receive Maximum) instead.
            self._reject("overload", topic or "?", "ingest queue full")
            return
        payload, at = bytes(message.payload), self.clock()
        pending = self._pending
        pending.append(Received(topic, payload, message.qos, message.mid, self._generation, at, time.monotonic()))
        if not self._arrived.is_set():
            self._arrived.set()
        if len(pending) >= self.batch_max and not self._full.is_set():
            self._full.set()

    def _next_batch(self) -> list[Received]:
        """Up to ``batch_max`` received messages; empty after 0.2 s without any."""
        if not self._pending:
            self._arrived.clear()
            # Checked again after clear(): a message appended in between has set the event or is seen here.
            if not self._pending and not self._arrived.wait(0.2):
                return []
        pending = self._pending
        # Messages arrive one by one: taken as they come, a burst becomes hundreds of tiny
        # transactions, each a commit and a hand-over of the GIL between paho's thread and this
        # one (``s4edge bench ingest``). So linger while the queue grows, up to ``linger_s`` after
        # the oldest arrived; stop at once when it stops growing: the burst is over, or the
        # broker's in-flight window (3.1.1 brokers choose it: mosquitto's default is 20) is full
        # and waits for our acks.
        deadline = pending[0].t0 + self.linger_s
        while len(pending) < self.batch_max and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            before = len(pending)
            self._full.clear()
            if len(pending) >= self.batch_max:  # checked again after clear(), as above
                break
            self._full.wait(min(left, self.linger_quiet_s))
            if len(pending) == before:
                break
        batch: list[Received] = []
        while pending and len(batch) < self.batch_max:
            batch.append(pending.popleft())
        return batch

    def _write_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._stopping.is_set():
                    return
                continue
            try:
                self.process(batch)
            except Exception:  # a bug in one batch must not stop ingest
                log.exception(
                    "ingest batch of %d failed; left unacked, the broker redelivers it on reconnect", len(batch)
                )

    # -- validate, commit, acknowledge -------------------------------------------------------------

    def process(self, received: Sequence[Received]) -> None:
        batch = Batch()
        counts = dict.fromkeys(self._received, 0)  # one counter update per type per batch, not per message
        for item in received:
            if item.topic is None:
                counts["other"] += 1
                self._reject("bad_topic", "?", "topic is not UTF-8")
                continue
            suffix = item.topic.rpartition("/")[2]
            counts[suffix if suffix in counts else "other"] += 1
            try:
                batch.add(decode_from(item.topic, item.payload), item.at)
            except MessageError as exc:
                self._reject(exc.reason, item.topic, exc.detail)
        for suffix, count in counts.items():
            if count:
                self._received[suffix].inc(count)
        new_ids = self._commit_with_retry(batch)
        if new_ids is None:
            return  # stopping during a store outage: leave unacked, the broker redelivers
        done = time.monotonic()
        client, generation, observe = self._client, self._generation, self.metrics.latency.observe
        for item in received:
            observe(done - item.t0)
            if item.qos > 0 and item.generation == generation and client is not None:
                client.ack(item.mid, item.qos)
        self._announce(batch, new_ids)

    def _commit_with_retry(self, batch: Batch) -> set[str] | None:
        """Commit, retrying through a store outage; None when stopping mid-outage (nothing is
        then acked, and the broker redelivers)."""
        delay = 0.5
        stored: set[str] = set()  # new alert ids already committed one by one before an outage
        refused: set[str] = set()  # and those already rejected: a retry does not count them twice
        while True:
            try:
                try:
                    return stored | self._commit(batch)
                except DBAPIError as exc:
                    if _transient(exc):
                        raise
                    return self._commit_one_by_one(batch, stored, refused)
                except SQLAlchemyError:
                    return self._commit_one_by_one(batch, stored, refused)
            except DBAPIError as exc:  # an outage, in the batch or in one of its single rows
                if not _transient(exc):
                    raise
                self.metrics.store_errors.inc()
                log.warning("store unavailable (%s); retrying in %.1f s", type(exc.orig).__name__, delay)
            if self._stopping.wait(delay):
                return None
            delay = min(delay * 2, 10.0)

    def _commit(self, batch: Batch) -> set[str]:
        keys = {(a.site, a.node_id) for a, _ in batch.alerts.values()}
        keys |= {(r.site, r.node_id) for r, _ in batch.results} | set(batch.readings)
        keys -= self._known_nodes  # node rows are never deleted: once seen, no need to ask again
        with self.store.engine.begin() as conn:
            self.store.ensure_nodes(conn, keys)
            new_ids = self._alert_rows.insert(conn, list(batch.alerts.values()))
            for status, at in batch.statuses.values():
                self.store.record_status(conn, status, at)
            self.store.record_heartbeats(conn, list(batch.beats.values()))
            self.store.record_telemetry_batch(conn, list(batch.readings.values()))
            for result, at in batch.results:
                self.store.record_cmd_result(conn, result, at)
        self._known_nodes |= keys | set(batch.statuses) | set(batch.beats)
        self.metrics.duplicates.inc(len(batch.alerts) - len(new_ids) + batch.duplicates_in_batch)
        for kind, count in (
            ("alert", len(new_ids)),
            ("status", len(batch.statuses)),
            ("heartbeat", len(batch.beats)),
            ("telemetry", len(batch.readings)),
            ("cmd_result", len(batch.results)),
        ):
            if count:
                self.metrics.stored.labels(kind).inc(count)
        return new_ids

    def _commit_one_by_one(self, batch: Batch, new_ids: set[str], refused: set[str]) -> set[str]:
        """The store refused the batch (not an outage): find and reject the message it refuses.
        An outage meanwhile is raised, never taken for a refusal: the row would be acked unstored."""
        singles: list[Batch] = []
        for alert, at in batch.alerts.values():
            if alert.id not in new_ids and alert.id not in refused:
                singles.append(Batch(alerts={alert.id: (alert, at)}))
        for slot, name in ((batch.statuses, "statuses"), (batch.beats, "beats"), (batch.readings, "readings")):
            for key, value in slot.items():
                single = Batch()
                getattr(single, name)[key] = value
                singles.append(single)
        singles += [Batch(results=[r]) for r in batch.results]
        for single in singles:
            try:
                new_ids |= self._commit(single)
            except SQLAlchemyError as exc:
                if isinstance(exc, DBAPIError) and _transient(exc):
                    raise
                refused.update(single.alerts)
                self._reject("store_refused", "store", str(exc)[:300])
        return new_ids

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.rejections.note(reason, topic, detail)

    def _announce(self, batch: Batch, new_ids: set[str]) -> None:
        # Building the live record costs as much as storing the row: only for someone watching.
        live = self.events is not None and self.events.subscribers > 0
        announced = new_ids if live or self.on_alert_stored else ()
        for alert_id in sorted(announced, key=lambda i: batch.alerts[i][0].ts):
            alert, at = batch.alerts[alert_id]
            if live and self.events is not None:
                self.events.publish("alert", alert_record(alert, at))
            for hook in self.on_alert_stored:
                try:
                    hook(alert)
                except Exception:  # a subscriber's bug must not stop ingest
                    log.exception("on_alert_stored hook %r failed for alert %s", hook, alert.id)
        if self.events is not None:
            for site, node_id in {*batch.statuses, *batch.beats}:
                change = "status" if (site, node_id) in batch.statuses else "heartbeat"
                self.events.publish("node", {"site": site, "node_id": node_id, "change": change})


def _transient(exc: DBAPIError) -> bool:
    """An outage (connection lost, database locked) is retried; bad data is not."""
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
