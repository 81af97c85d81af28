"""Broker → store: subscribe, validate, de-duplicate, commit, then acknowledge.

paho's network thread only queues what arrives; one writer thread takes what is queued
(up to ``batch_max``, gathering a burst for up to ``linger_s``), has it validated and
committed in one transaction (``writer.BatchWriter``, here or, with ``writer_process``,
in a child process) and only then sends the PUBACKs (``manual_ack``). A crash between
commit and ack makes the broker redeliver, and the primary key on ``alerts.id`` drops the copy.

After the commit it also sends each node a receipt naming its alerts the store now holds,
new or stored before (``s4edge/v1/{site}/{node}/receipt``, QoS 1): the node keeps an alert
until then, since a broker may lose what it acknowledged. Each replica of a shared
subscription confirms what it committed itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from s4edge.cloud_sync.aggregator.broker import BrokerConfig, BrokerError, may_lack_mqtt5
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics, RejectionLog
from s4edge.cloud_sync.aggregator.paho_tuning import ack_all, tune
from s4edge.cloud_sync.aggregator.store import Store
from s4edge.cloud_sync.aggregator.views import alert_record
from s4edge.cloud_sync.aggregator.writer import (
    SUFFIXES,
    BatchWriter,
    Item,
    Outcome,
    StoreSpec,
    WriterGone,
    WriterProcess,
    WriterRules,
)
from s4edge.cloud_sync.messages import Alert, encode, fleet_filter, receipts_for, topic_for

log = logging.getLogger("s4edge.aggregator")

V5_PROBE_S = 3.0
BATCH_RETRIES = 3  # a batch whose commit raised is tried this many times more, then acked unstored
LINGER_S = 0.02  # the most a burst's first message waits for the rest of its batch
LINGER_QUIET_S = 0.002  # a batch stops gathering when nothing arrived for this long
QOS0_BACKLOG = 20000  # heartbeats and telemetry held for the writer before new ones are shed
SESSION_TAKEN_OVER = 0x8E  # MQTT 5.0 §3.14.2.1: another connection took this client id's session
SHORT_LIVED_S = 5.0  # a connection the broker closes this soon after it opened, and
TAKEN_OVER_AFTER = 3  # this many of them in a row: another client is taking the session over


class Received(NamedTuple):  # made in paho's thread for every message: a tuple is the cheapest
    topic: str | None
    payload: bytes
    qos: int
    mid: int
    generation: int  # which connection delivered it: a mid is only meaningful on that connection
    at: datetime
    t0: float


class Ingest:
    def __init__(
        self,
        broker: BrokerConfig,
        store: Store,
        metrics: IngestMetrics,
        *,
        client_id: str,
        group: str | None = "s4edge-aggregator",
        retired_group: str | None = None,
        session_expiry_s: int = 86400,
        batch_max: int = 500,
        linger_s: float = LINGER_S,
        protocol: str = "auto",
        events: EventBus | None = None,
        rejection_log: RejectionLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        writer_process: StoreSpec | None = None,
        rules: WriterRules = WriterRules(),
        receipts: bool = True,
    ) -> None:
        """``writer_process``: validate and commit in a child process that opens this
        store by its spec (what ``store`` is opened from); otherwise in this process.
        ``receipts``: confirm stored alerts to their nodes; off only to measure their cost."""
        if protocol not in ("auto", "5", "3.1.1"):
            raise ValueError("protocol: auto, 5 or 3.1.1")
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.client_id = client_id
        self.group = group
        self.retired_group = retired_group
        self.session_expiry_s = session_expiry_s
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.linger_quiet_s = LINGER_QUIET_S
        self.protocol = protocol
        self.events = events
        self.rejections = rejection_log or RejectionLog()
        self.clock = clock
        self.receipts = receipts
        # the receipts' issuer: this replica, by its client id as far as the contract allows
        self.issuer = re.sub(r"[^A-Za-z0-9_.:-]", "-", client_id)[:64] or "aggregator"
        self._receipt_seq = 0
        self.store_failure: str | None = None  # why commits fail, until one succeeds (``/healthz``)
        self.protocol_used: MQTTProtocolVersion | None = None
        # paho's thread appends, the writer pops: deque operations are atomic, so the network
        # thread pays no lock per message; ``_arrived`` wakes an idle writer.
        self._pending: deque[Received] = deque()
        self._arrived = threading.Event()
        self._full = threading.Event()  # ``batch_max`` are waiting: stop lingering
        self._generation = 0
        self._connected_at = 0.0
        self._short_lived = 0  # connections in a row that the broker closed soon after they opened
        self._received = {s: metrics.received.labels(s) for s in (*SUFFIXES, "other")}  # labels() costs a lookup
        self._stopping = threading.Event()
        self.writer = BatchWriter(store, rules=rules, stopping=self._stopping, on_store_error=self._store_error)
        self.writer_process = writer_process
        self._child: WriterProcess | None = None
        self.on_jobs: Callable[[], object] | None = None  # see ``forward_jobs``
        # After each batch is acknowledged and announced, in the writer thread; must return at
        # once (an ingest worker process reports its metrics to its parent: ``workers.py``).
        self.on_progress: Callable[[], object] | None = None
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def open_writer(self) -> None:
        """Start the writer process, if there is to be one (``start`` does it too)."""
        if self.writer_process is not None and not self.writer_process.shareable:
            log.warning("the store is an in-memory SQLite database, which no other process can open: writing here")
            self.writer_process = None
        if self.writer_process is not None and self._child is None:
            self._child = WriterProcess(self.writer_process, self.writer.rules, on_store_error=self._store_error)

    def forward_jobs(self, kinds: frozenset[str], on_jobs: Callable[[], object] | None = None) -> None:
        """New alerts of these kinds get a forward job in the commit that stores them; before
        the writer process starts (``open_writer``), which is told its rules once. ``on_jobs``
        is called after each commit that wrote jobs (the forwarder's ``wake``), in the writer
        thread: it must return at once."""
        if self._child is not None:
            raise RuntimeError("set forward jobs before the writer process starts")
        self.writer.rules = replace(self.writer.rules, forward_kinds=kinds)
        self.on_jobs = on_jobs

    def start(self, timeout: float = 10.0) -> None:
        self.open_writer()
        order: list[MQTTProtocolVersion] = {
            "auto": [mqtt.MQTTv5, mqtt.MQTTv311],
            "5": [mqtt.MQTTv5],
            "3.1.1": [mqtt.MQTTv311],
        }[self.protocol]
        failure = ""
        for protocol in order:
            client = self.broker.client(self.client_id, protocol, manual_ack=True)
            tune(client)  # reads in blocks: paho_tuning.py
            # A 3.1.1-only broker (amqtt, the demo's) may never answer a v5 CONNECT: probe briefly.
            fallback_left = protocol != order[-1]
            failure = self._connect(client, protocol, min(timeout, V5_PROBE_S) if fallback_left else timeout)
            if not failure:
                self._client, self.protocol_used = client, protocol
                break
            if not may_lack_mqtt5(failure):
                break  # refused for another reason (credentials, ACL): a fallback would not help
        if self._client is None:
            self._close_writer()
            raise BrokerError(f"could not connect to {self.broker.shown_url}: {failure}")
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
            elif not self._stopping.is_set():
                self._lost_connection(reason)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_connect_fail = self._broker_away
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
            return self.broker.connect_failure(exc)
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
        self._connected_at = time.monotonic()
        filters = [fleet_filter(suffix) for suffix in SUFFIXES]
        if protocol == mqtt.MQTTv5:
            if self.retired_group and self.retired_group != self.group and getattr(flags, "session_present", False):
                # a resumed session still holds the old group's subscription: each message would come twice
                client.unsubscribe([f"$share/{self.retired_group}/{f}" for f in filters])
            if self.group:
                filters = [f"$share/{self.group}/{f}" for f in filters]
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        else:
            client.subscribe([(f, 1) for f in filters])
        log.info(
            "connected to %s as %s (MQTT %s, session present: %s)",
            self.broker.shown_url,
            self.client_id,
            "5" if protocol == mqtt.MQTTv5 else "3.1.1",
            getattr(flags, "session_present", None),
        )

    def _broker_away(self, _c: mqtt.Client, _u: Any) -> None:
        """A reconnection that failed: the broker is down or restarting (a crash loop closes
        connections soon after they open as well), which is no sign of a client taking this
        one's session over."""
        self._short_lived = 0

    def _lost_connection(self, reason: ReasonCode) -> None:
        """Say so when another client takes this one's session: the broker closes the connection
        as the other opens (MQTT 5 reason 0x8E where it says why; mosquitto 2.0 just closes it),
        and both reconnect, each closing the other's, every second or so."""
        lasted = time.monotonic() - self._connected_at
        self._short_lived = self._short_lived + 1 if lasted < SHORT_LIVED_S else 0
        if self._short_lived % 60 == TAKEN_OVER_AFTER or (reason == SESSION_TAKEN_OVER and self._short_lived == 1):
            log.error(
                "the broker keeps closing the connection as %s (%d times in a row within %.0f s of connecting; "
                "last: %s): another client is taking its session over. Two aggregators, replicas or ingest "
                "workers share a client id; a broker that makes the username the client id (mosquitto's "
                "use_username_as_clientid, as `s4edge fleet broker-config` writes it) needs a username for "
                "each: `s4edge fleet aggregator-credentials --workers N`, then `--username NAME-w{worker}` "
                "(docs/architecture.md, 'Ingest workers')",
                self.client_id,
                self._short_lived,
                SHORT_LIVED_S,
                reason,
            )

    def stop(self) -> None:
        """Take no more; commit and acknowledge what has arrived, then disconnect cleanly (the
        session stays, with what arrived since unacknowledged for the broker to give again)."""
        self._stopping.set()
        if self._child is not None:
            self._child.stopping.set()
        if self._writer is not None:
            self._writer.join(30)
        self._close_writer()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._client = None

    def _close_writer(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None

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
        if self._stopping.is_set():
            # Left unacked: the broker gives it again to this session or another worker. Taken,
            # a steady stream never let the writer find the queue empty and stop.
            return
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

    def _next_batch(self, idle_wait: float = 0.2) -> list[Received]:
        """Up to ``batch_max`` received messages; empty after ``idle_wait`` without any."""
        if not self._pending:
            self._arrived.clear()
            # Checked again after clear(): a message appended in between has set the event or is seen here.
            if not self._pending and not self._arrived.wait(idle_wait):
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
        # With a writer process, a batch it has committed is acked and announced while it
        # writes the next one, so that it does not wait for this thread between batches.
        held: Committed | None = None
        while True:
            batch = self._next_batch(idle_wait=0.2 if held is None else 0.0)
            if not batch:
                if held is not None:
                    self._finish_logged(held)
                    held = None
                elif self._stopping.is_set():
                    return
                continue
            previous, held = held, None
            try:
                held = self._commit(batch, previous)
            except Exception:  # a bug in one batch, a writer lost twice: it must not stop ingest
                log.exception("ingest batch of %d failed; trying it again", len(batch))
                held = self._commit_again(batch)
            if previous is not None and not previous.finished:
                self._finish_logged(previous)
            if held is not None and self._child is None:
                self._finish_logged(held)
                held = None

    def _commit_again(self, batch: Sequence[Received]) -> Committed | None:
        """A batch whose commit failed, tried ``BATCH_RETRIES`` times more, 1, 2 and 4 s apart.
        Then it is acknowledged unstored: unacknowledged, its messages held the broker's in-flight
        window (MQTT 5.0 §4.9, Receive Maximum) and no new message came, for good, until a restart.
        Its alerts come back from their nodes, which send each alert again until its receipt."""
        for attempt in range(BATCH_RETRIES):
            if self._stopping.wait(2.0**attempt):
                return None
            try:
                return self._commit(batch)
            except Exception:
                log.exception(
                    "ingest batch of %d failed again (try %d of %d)", len(batch), attempt + 2, 1 + BATCH_RETRIES
                )
        log.error(
            "ingest batch of %d dropped after %d tries; acknowledged so that the broker sends the rest, "
            "its alerts come back from their nodes (no receipt was sent)",
            len(batch),
            1 + BATCH_RETRIES,
        )
        self.metrics.rejected.labels("batch_failed").inc(len(batch))
        self._ack(batch)
        return None

    def _ack(self, received: Sequence[Received]) -> None:
        """PUBACK those of ``received`` that came at QoS 1 on this connection (the subscriptions
        ask for no more); one from a connection since lost the broker sends again."""
        client, generation = self._client, self._generation
        if client is not None:
            ack_all(client, [item.mid for item in received if item.qos > 0 and item.generation == generation])

    def _finish_logged(self, committed: Committed) -> None:
        try:
            self._finish(committed)
        except Exception:  # stored all the same; a bug in acking or announcing must not stop ingest
            log.exception("finishing a stored batch of %d failed", len(committed.received))

    # -- validate, commit, acknowledge -------------------------------------------------------------

    def process(self, received: Sequence[Received]) -> None:
        """Validate, commit, acknowledge and announce one batch."""
        committed = self._commit(received)
        if committed is not None:
            self._finish(committed)

    def _commit(self, received: Sequence[Received], previous: Committed | None = None) -> Committed | None:
        """Have the batch validated and committed; None when stopping during a store outage
        (nothing is then acked: the broker redelivers). ``previous`` is finished while the
        writer process commits this one."""
        # Building the live record costs as much as storing the row: only for someone watching.
        live = self.events is not None and self.events.subscribers > 0
        items = [(item.topic, item.payload, item.at) for item in received]
        child = self._child
        if child is None:
            outcome = self.writer.write(items)
            if outcome is None:
                return None
            self._committed(outcome)
            batch = outcome.batch
            decoded = {batch.alert_index[i]: pair for i, pair in batch.alerts.items()} if batch and live else {}
            return Committed(received, outcome, decoded, live)
        try:
            child.submit(items)
        except WriterGone as exc:
            if self._stopping.is_set():
                return None
            log.warning("%s; starting another and writing the batch again", exc)
            child.restart()
            child.submit(items)  # a second loss is the loop's to log: the batch stays unacked
        try:
            if previous is not None:
                self._finish(previous)
            # The child validates these payloads too; decoding them again here, while it
            # commits, gives the live stream its alerts without lengthening the batch.
            decoded = _alerts_of(received) if live else {}
        except Exception:
            self._result(child, items)  # read this batch's answer all the same: the next is the next's
            raise
        outcome = self._result(child, items)
        if outcome is None:
            return None
        self._committed(outcome)
        return Committed(received, outcome, decoded, live)

    def _committed(self, outcome: Outcome) -> None:
        self.store_failure = None
        # at once, not when the batch is acked: the forward should not wait for the next batch
        if outcome.forward_jobs and self.on_jobs is not None:
            self.on_jobs()

    def _result(self, child: WriterProcess, items: list[Item]) -> Outcome | None:
        try:
            return child.result()
        except WriterGone as exc:
            if self._stopping.is_set():
                return None
            # Alerts it committed before it died come back as duplicates: stored, not streamed
            # live; their forward jobs, if any, were committed with them.
            log.warning("%s; starting another and writing the batch again", exc)
            child.restart()
            return child.write(items)

    def _finish(self, committed: Committed) -> None:
        """Count, acknowledge, then announce a committed batch."""
        committed.finished = True
        outcome, received = committed.outcome, committed.received
        self._count(outcome)
        done, observe = time.monotonic(), self.metrics.latency.observe
        for item in received:
            observe(done - item.t0)
        self._ack(received)
        client = self._client
        if self.receipts and client is not None:
            self._send_receipts(client, outcome.confirmed)
        if committed.live:
            self._announce_alerts(outcome, committed.decoded)
        if self.events is not None:
            for site, node_id, change in outcome.nodes:
                self.events.publish("node", {"site": site, "node_id": node_id, "change": change})
        if self.on_progress is not None:
            self.on_progress()

    def _send_receipts(self, client: mqtt.Client, confirmed: dict[tuple[str, str], set[str]]) -> None:
        """QoS 1, queued by paho across a reconnect. A receipt lost all the same costs only
        a resend after the node's timeout, which the store drops as a duplicate and confirms."""
        # milliseconds since the epoch: seq keeps increasing across restarts without a counter on disk
        seq = max(self._receipt_seq, time.time_ns() // 1_000_000)
        for (site, node_id), ids in confirmed.items():
            for receipt in receipts_for(site, node_id, self.issuer, list(ids), seq):
                client.publish(topic_for(receipt), encode(receipt), qos=1)
                seq += 1
        self._receipt_seq = seq

    def _count(self, outcome: Outcome) -> None:
        """One counter update per type per batch, not per message."""
        for suffix, count in outcome.received.items():
            self._received[suffix].inc(count)
        for reason, topic, detail in outcome.rejects:
            self._reject(reason, topic, detail)
        if outcome.duplicates:
            self.metrics.duplicates.inc(outcome.duplicates)
        for kind, count in outcome.stored.items():
            self.metrics.stored.labels(kind).inc(count)

    def _store_error(self, reason: str) -> None:
        self.store_failure = reason
        self.metrics.store_errors.inc()

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.rejections.note(reason, topic, detail)

    def _announce_alerts(self, outcome: Outcome, decoded: Decoded) -> None:
        if self.events is None:
            return
        for index in outcome.new_alerts:
            if index in decoded:
                self.events.publish("alert", alert_record(*decoded[index]))


Decoded = dict[int, tuple[Alert, datetime]]  # place in the batch → the alert there, and when it came


@dataclass
class Committed:
    """A batch the store has, not yet acknowledged and announced."""

    received: Sequence[Received]
    outcome: Outcome
    decoded: Decoded
    live: bool
    finished: bool = False


def _alerts_of(received: Sequence[Received]) -> Decoded:
    """The alerts of a batch the writer process validates too: here only the alert model is
    tried on an alert topic's payload (no union, no topic parse), which it was checked against."""
    decoded: Decoded = {}
    validate = Alert.model_validate_json
    for index, item in enumerate(received):
        if item.topic is None or not item.topic.endswith("/alert"):
            continue
        try:
            decoded[index] = (validate(item.payload), item.at)
        except ValueError:
            continue  # refused by the writer too
    return decoded
