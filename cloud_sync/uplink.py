"""The node's MQTT link, behind a small interface (paho 2.x stays here).

``MqttUplink`` runs its own connect loop so that reconnects use jittered backoff
(1 s → 60 s) and a broker that refuses MQTT v5 gets a 3.1.1 retry. MQTT v5 sessions
are persistent (clean start off, session expiry set). The Last Will is rebuilt before
every connect, and ``on_connect`` hooks run after every CONNACK (the node republishes
its retained ``online`` status there).

``Forwarder`` drains the outbox: it publishes rows in order while connected, keeps a
bounded window in flight, and acts on a row only when its ``MQTTMessageInfo`` says the
broker acknowledged it. After a reconnect it starts again from the oldest row not yet
acknowledged: duplicates are fine (the aggregator de-duplicates by ``id``), loss is not.
An acknowledged row goes, unless it awaits a receipt (an alert): a broker may lose what
it acknowledged (mosquitto saves its state only periodically), so the row stays, marked
in flight, and is sent again after ``receipt_timeout_s`` (doubling up to
``receipt_backoff_max_s``) until the aggregator's receipt deletes it.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from s4edge.cloud_sync.broker_url import BrokerEndpoint, broker_endpoint, mqtt_client
from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.outbox import Operation, Outbox, Row

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
LastWill = Callable[[], tuple[str, bytes]]


class Delivery(Protocol):
    def acked(self) -> bool:
        """True once the broker acknowledged (PUBACK for QoS 1, sent for QoS 0)."""

    def failed(self) -> bool:
        """True if the message was not accepted for sending (e.g. not connected)."""

    def wait(self, timeout: float) -> bool: ...


class Uplink(Protocol):
    connected: threading.Event

    @property
    def session(self) -> int:
        """Increments on every successful connect."""

    def start(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Delivery: ...

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None: ...

    def on_connect(self, hook: Callable[[], None]) -> None: ...

    def close(self, last: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None: ...

    def progress(self) -> float | None:
        """When the connection thread last made progress (``time.monotonic()``); None when
        it is not running. The node's watchdog asks."""


@dataclass(frozen=True)
class UplinkSettings:
    """Plain settings, so that cloud_sync needs nothing from the node's config."""

    url: str
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_inflight: int = 100
    connack_timeout_s: float = 10.0

    @property
    def endpoint(self) -> BrokerEndpoint:
        """Host, port, transport (MQTT or WebSocket), TLS; ``BrokerUrlError`` (a ValueError) if unusable."""
        return broker_endpoint(self.url)


class Backoff:
    """Exponential backoff with "equal jitter": each wait is drawn from [d/2, d], never
    below the minimum, and d doubles up to the maximum. Jitter keeps a fleet that lost
    its broker from reconnecting in lock-step."""

    def __init__(self, min_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.min_s, self.max_s = min_s, max_s
        self._rng = rng or random.Random()  # jitter, not cryptography
        self._delay = min_s

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_s)
        return max(self.min_s, self._rng.uniform(delay / 2, delay))

    def reset(self) -> None:
        self._delay = self.min_s


class _PahoDelivery:
    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    def failed(self) -> bool:
        return self._info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)

    def acked(self) -> bool:
        return not self.failed() and self._info.is_published()

    def wait(self, timeout: float) -> bool:
        if self.failed():
            return False
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # paho: the connection went while it waited (its rc says so)
            return False
        return self._info.is_published()


# MQTT 3.1.1 §3.2.2.3 return code 1 / MQTT 5 reason code 0x84: unsupported protocol version.
_REFUSED_PROTOCOL = {1, 0x84}


class MqttUplink:
    def __init__(self, settings: UplinkSettings, will: LastWill | None = None) -> None:
        self.settings = settings
        self._endpoint = settings.endpoint
        self._host, self._port = self._endpoint.host, self._endpoint.port
        self._will = will
        self.connected = threading.Event()
        self._session = 0
        self._closing = threading.Event()
        self._hooks: list[Callable[[], None]] = []
        self._hooks_due = False
        self._subscriptions: dict[str, tuple[Handler, int]] = {}
        self._lock = threading.Lock()
        self._protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
        self._connack: ReasonCode | None = None
        self._client = self._new_client()
        self._thread: threading.Thread | None = None
        self._progressed_at = time.monotonic()
        self.backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)

    @property
    def session(self) -> int:
        return self._session

    @property
    def protocol(self) -> str:
        return "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        v5 = self._protocol == mqtt.MQTTv5
        client = mqtt_client(
            self._endpoint,
            client_id=s.client_id,
            protocol=self._protocol,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self._endpoint.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # This connection thread is the socket's only writer. Without an event loop
        # registered, paho writes a publish from the caller's thread, unlocked, while
        # ``loop()`` writes from this one: two writers reorder packets, or interleave a
        # packet cut short by a full socket buffer into a malformed stream. With one
        # registered (a no-op), a publish queues its packet and wakes ``loop()``.
        client.on_socket_register_write = _loop_writes
        for topic_filter, (handler, _) in self._subscriptions.items():
            client.message_callback_add(topic_filter, _dispatch(handler))
        return client

    # -- the interface ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-uplink", daemon=True)
        self._thread.start()

    def on_connect(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def progress(self) -> float | None:
        thread = self._thread
        return self._progressed_at if thread is not None and thread.is_alive() else None

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Delivery:
        return _PahoDelivery(self._client.publish(topic, payload, qos=qos, retain=retain))

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        with self._lock:
            self._subscriptions[topic_filter] = (handler, qos)
            client = self._client
        client.message_callback_add(topic_filter, _dispatch(handler))
        if self.connected.is_set():
            client.subscribe(topic_filter, qos)

    def close(self, last: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Publish ``last`` (retained, QoS 1: the ``offline`` status) and disconnect cleanly."""
        if last is not None and self.connected.is_set():
            delivery = self.publish(last[0], last[1], qos=1, retain=True)
            if not delivery.wait(timeout):
                log.warning("broker did not acknowledge the final status within %.0f s", timeout)
        self._closing.set()
        self._client.disconnect()  # queued: the connection thread writes it before it ends
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the connect loop ------------------------------------------------------------

    def _run(self) -> None:
        failures = FailureLog(log, f"MQTT connection loop to {self._host}:{self._port}")
        while not self._closing.is_set():
            self._progressed_at = time.monotonic()
            try:
                again_now = self._attempt()
            except Exception as exc:  # no error ends this thread: the Last Will on a full disk, a TLS file, paho
                self.connected.clear()
                failures.failed(exc)
                again_now = False
            else:
                failures.ok()
            if not again_now:
                self._pause(self.backoff.next())

    def _attempt(self) -> bool:
        """One connection, from CONNECT until it ends; True to try again at once (the 3.1.1 fallback)."""
        client = self._client
        self._connack = None
        try:
            self._connect(client)
        except (OSError, ValueError) as exc:
            log.warning("cannot reach MQTT broker %s:%s: %s", self._host, self._port, exc)
            return False
        self._serve(client)
        return not self._closing.is_set() and self._switch_protocol()

    def _pause(self, seconds: float) -> None:
        """Wait out a backoff, stamping progress each second: a long wait is no stall."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._closing.wait(min(left, 1.0)):
            self._progressed_at = time.monotonic()

    def _serve(self, client: mqtt.Client) -> None:
        """Run the network loop until the connection ends. Some 3.1.1-only brokers never
        answer a v5 CONNECT at all, hence the CONNACK deadline."""
        deadline = time.monotonic() + self.settings.connack_timeout_s
        while self._serving(client) and client.loop(timeout=0.2) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._progressed_at = time.monotonic()
            if self._hooks_due:
                self._run_hooks()
            if self._connack is None and time.monotonic() > deadline:
                log.warning(
                    "no CONNACK from %s:%s within %g s", self._host, self._port, self.settings.connack_timeout_s
                )
                client.disconnect()
        self.connected.clear()

    def _serving(self, client: mqtt.Client) -> bool:
        """On until ``close()``; then on while connected (``close()`` has yet to queue its
        DISCONNECT) or while anything queued is unwritten (that DISCONNECT last)."""
        return not self._closing.is_set() or client.is_connected() or client.want_write()

    def _switch_protocol(self) -> bool:
        """MQTT v5 is the default and 3.1.1 the fallback (docs/architecture.md, "Delivery
        guarantees"). A 3.1.1-only broker answers a v5 CONNECT with return code 1 or just
        closes the socket; either way we retry at once with 3.1.1. If the fallback fails as
        well, v5 gets the next try."""
        if self.settings.protocol != "5":
            return False
        refused = self._connack is None or self._connack.value in _REFUSED_PROTOCOL
        if self._protocol == mqtt.MQTTv5 and refused:
            log.warning("broker did not accept MQTT v5 (%s); retrying with MQTT 3.1.1", self._connack or "no CONNACK")
            new, switch_now = mqtt.MQTTv311, True
        elif self._protocol == mqtt.MQTTv311 and (self._connack is None or self._connack.is_failure):
            new, switch_now = mqtt.MQTTv5, False
        else:
            return False
        with self._lock:
            self._protocol = new
            self._client = self._new_client()
        return switch_now

    def _connect(self, client: mqtt.Client) -> None:
        if self._will is not None:
            will_topic, will_payload = self._will()
            client.will_set(will_topic, will_payload, qos=1, retain=True)
        if self._protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.settings.session_expiry_s
            client.connect(self._host, self._port, self.settings.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect(self._host, self._port, self.settings.keepalive_s)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self._connack = reason
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.backoff.reset()
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        for topic_filter, (_, qos) in subscriptions:
            client.subscribe(topic_filter, qos)
        self._session += 1
        self.connected.set()
        log.info("connected to %s:%s (MQTT %s)", self._host, self._port, self.protocol)
        self._hooks_due = True  # run by _serve once paho has queued its resends: see _run_hooks

    def _run_hooks(self) -> None:
        """The ``on_connect`` hooks, after paho has finished with the CONNACK. paho calls
        ``on_connect`` before it resends what the last connection left unacknowledged, so a
        hook's fresh ``online`` status would reach the broker before a stale one and the
        stale one stay retained."""
        self._hooks_due = False
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                log.exception("on_connect hook failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if self.connected.is_set() and not self._closing.is_set():
            log.warning("disconnected from %s:%s: %s", self._host, self._port, _disconnect_reason(flags, reason))
        self.connected.clear()


def _disconnect_reason(flags: mqtt.DisconnectFlags, reason: ReasonCode) -> str:
    """Why the connection ended. paho 2 gives a connection it lost (MQTT_ERR_CONN_LOST: the
    broker stopped, the network went) the DISCONNECT reason code "Unspecified error"
    (``convert_disconnect_error_code_to_reason_code``), as though the broker had sent one;
    only a DISCONNECT packet from the broker carries its own reason (MQTT 5.0 §3.14.2.1)."""
    if not flags.is_disconnect_packet_from_server and reason == ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"):
        return "connection lost"
    return str(reason)


def _loop_writes(client: mqtt.Client, userdata: object, sock: object) -> None:
    """Nothing to register: ``MqttUplink._serve``'s ``loop()`` writes what is queued."""


def _dispatch(handler: Handler) -> Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]:
    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            handler(message.topic, bytes(message.payload))
        except Exception:  # a bad inbound message must never kill the network loop
            log.exception("handler for %s failed", message.topic)

    return on_message


RESEND_CHECK_S = 1.0  # how often the forwarder looks for rows whose receipt is overdue


class Forwarder:
    """Drains an ``Outbox`` through an ``Uplink`` in order; a row leaves once acknowledged,
    by the broker or, when it awaits a receipt, by the aggregator."""

    def __init__(
        self,
        outbox: Outbox,
        uplink: Uplink,
        window: int = 100,
        receipt_timeout_s: float = 30.0,
        receipt_backoff_max_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """``clock``: UNIX time, as the in-flight marks on disk outlive this process."""
        self.outbox = outbox
        self.uplink = uplink
        self.window = window
        self.receipt_timeout_s = receipt_timeout_s
        self.receipt_backoff_max_s = receipt_backoff_max_s
        self.clock = clock
        self._rng = rng or random.Random()  # jitter, not cryptography
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # In-flight marks not known to be on disk, by row id: (attempts, UNIX time to send it
        # again). A row whose mark failed (a full disk) waits for that time all the same, and
        # is then read again from the oldest row: left to the disk, it was either never sent
        # again (no mark, and the read had moved past it) or sent again at once, over and over
        # (its old mark, long due).
        self._unwritten: dict[int, tuple[int, float]] = {}
        self._marking: list[tuple[Operation, list[tuple[int, int, float]]]] = []
        self._failed: dict[int, float] = {}  # those of them whose mark failed

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="outbox-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        """The draining thread is running (the node's systemd watchdog asks)."""
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every row (True) or ``timeout`` passes
        (False). Rows in flight stay in the outbox for their receipts, across a restart."""
        deadline = time.monotonic() + timeout
        while self.outbox.unsent() > 0:
            if time.monotonic() > deadline:
                return False
            self._stop.wait(0.02)
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.uplink.connected.wait(0.2):
                continue
            try:
                self._drain(self.uplink.session)
            except Exception:  # a disk or library error must not end delivery for good
                log.exception("forwarder failed; retrying from the oldest row")
                self._stop.wait(1.0)

    def _drain(self, session: int) -> None:
        """Send from the oldest row for as long as this connection lasts, and again what
        waited too long for its receipt."""
        inflight: deque[tuple[Row, Delivery]] = deque()
        last = 0
        next_resend_check = 0.0
        while not self._stop.is_set() and self.uplink.connected.is_set() and self.uplink.session == session:
            if self._settle_marks():
                last = 0  # a row whose mark failed is due: from the oldest again
            sent, read = 0, False
            room = self.window - len(inflight)
            if room > 0:
                rows = self.outbox.pending(room, after=last)
                read = bool(rows)  # read again from the oldest, a page may be filtered out whole
                last = rows[-1].id if rows else last
                sending = {row.id for row, _ in inflight}  # read again from the oldest: not twice
                rows = self._not_before_their_time([row for row in rows if row.id not in sending])
                if len(rows) < room and time.monotonic() >= next_resend_check:
                    overdue = self._overdue(room - len(rows), sending)
                    if len(overdue) < room - len(rows):  # all that is due: look again in a while
                        next_resend_check = time.monotonic() + RESEND_CHECK_S
                    rows += overdue
                for row in rows:
                    delivery = self.uplink.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                    if delivery.failed():
                        return  # connection lost under us; start over on the next one
                    inflight.append((row, delivery))
                    sent += 1
            done = [row for row, delivery in inflight if delivery.acked()]
            if done:
                self._acknowledged(done)
                finished = {row.id for row in done}
                inflight = deque(item for item in inflight if item[0].id not in finished)
            elif inflight:
                inflight[0][1].wait(0.05)
            elif not sent and not read:
                self.outbox.wait_for_put(0.2)

    def _overdue(self, limit: int, sending: set[int]) -> list[Row]:
        """Up to ``limit`` rows whose receipt is overdue, but for those on their way again."""
        # Every wait is at most 1.25 × the cap: a mark twice as far ahead predates a clock set back.
        # rows whose new mark failed are due on disk (their old mark) and filtered out here:
        # asked for past them, or they hid every other due row
        wanted = limit + len(sending) + len(self._unwritten)
        due = self.outbox.due(self.clock(), 2 * self.receipt_backoff_max_s, wanted)
        return self._not_before_their_time([row for row in due if row.id not in sending])[:limit]

    def _not_before_their_time(self, rows: list[Row]) -> list[Row]:
        """``rows`` but those acknowledged whose mark is not on disk and not due yet."""
        now = self.clock()
        return [row for row in rows if self._unwritten.get(row.id, (0, now))[1] <= now]

    def _acknowledged(self, rows: list[Row]) -> None:
        """PUBACK: a row goes, or, awaiting a receipt, is marked to be sent again if none
        comes. Neither waits for the disk: a lost delete or mark only means a resend."""
        self.outbox.ack([row.id for row in rows if row.receipt_id is None], wait=False)
        now = self.clock()
        timeout, cap, rng = self.receipt_timeout_s, self.receipt_backoff_max_s, self._rng
        marks = [
            (row.id, row.attempts + 1, now + receipt_wait(row.attempts, timeout, cap, rng))
            for row in rows
            if row.receipt_id is not None
        ]
        self._mark(marks)

    def _mark(self, marks: list[tuple[int, int, float]]) -> None:
        written = self.outbox.mark_in_flight(marks, wait=False)
        if written is not None:
            self._unwritten.update((row_id, (attempts, at)) for row_id, attempts, at in marks)
            self._marking.append((written, marks))

    def _settle_marks(self) -> bool:
        """Forget the marks now on disk, keep those that failed; True when the first of those
        is due (its row is read again: sent, acknowledged, and marked again)."""
        pending = []
        for written, marks in self._marking:
            if not written.done.is_set():
                pending.append((written, marks))
                continue
            for row_id, attempts, at in marks:
                if self._unwritten.get(row_id) != (attempts, at):
                    continue  # marked again since
                if written.error is None:
                    del self._unwritten[row_id]
                else:
                    self._failed[row_id] = at
        self._marking = pending
        now = self.clock()
        if not self._failed or now < min(self._failed.values()):
            return False
        # the rows due are read again; those not yet due wait for the next of them
        for row_id in [row_id for row_id, at in self._failed.items() if at <= now]:
            del self._failed[row_id]
            self._unwritten.pop(row_id, None)
        return True


def receipt_wait(attempts: int, timeout_s: float, max_s: float, rng: random.Random) -> float:
    """How long a row the broker acknowledged for the ``attempts + 1``-th time waits for its
    receipt: the timeout, doubled per earlier attempt up to the cap, plus up to a quarter
    of jitter, so that a fleet whose aggregator was away does not resend in lock-step."""
    return min(timeout_s * 2.0 ** min(attempts, 32), max_s) * rng.uniform(1.0, 1.25)
