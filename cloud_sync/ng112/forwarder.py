"""Forward alerts to the PSAP: policy, confirm-or-auto, one call per incident (Alert, then
Update/Cancel referencing it), retries with backoff, and a record of every outcome.

``submit`` only writes rows; sending happens in ``run_due`` (called inline by tests with an
injected clock, or by the background loop that ``start`` runs). A row is claimed with a
conditional UPDATE, so several aggregator replicas may share one database.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.cap import CapError, CapRef, MsgType
from s4edge.cloud_sync.ng112.correlation import Correlator
from s4edge.cloud_sync.ng112.pidf import LocationError
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.reconcile import site_alerts, unforwarded
from s4edge.cloud_sync.ng112.records import (
    OPEN_STATES,
    claim,
    forward_dict,
    forwards,
    incidents,
    new_token,
    take_back_lapsed,
)
from s4edge.cloud_sync.ng112.sip import parse_target
from s4edge.cloud_sync.ng112.transport import Delivery, Transaction

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
# Worth another try: the network or the PSAP's load, not the content (RFC 3261 §21.5, §21.4.9).
RETRY_CODES = frozenset({408, 480, 500, 503, 504})
# Beyond Timer F, time to compose the message and record the outcome before a claim lapses.
CLAIM_MARGIN_S = 30.0


def _retryable(delivery: Delivery) -> bool:
    if delivery.outcome in ("timeout", "closed", "unreachable", "garbage"):
        return True
    return delivery.code in RETRY_CODES


class Forwarder:
    def __init__(
        self,
        engine: Engine,
        config: Ng112Config,
        *,
        clock: Clock = lambda: datetime.now(UTC),
        transaction: Transaction | None = None,
        tls_context: ssl.SSLContext | None = None,
        schema: etree.XMLSchema | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.target = parse_target(config.psap)
        self.transaction = transaction or Transaction(config.timers, tls_context)
        self.schema = schema
        self.on_change = on_change
        self.caller = Caller(
            sender_domain=config.sender_domain,
            sender=config.sender,
            request_uri=config.request_uri,
            location_method=config.location_method,
            language=config.language,
        )
        self.correlator = Correlator(list(config.correlation), recall=self._recall)
        self._correlate = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._sending = 0  # rows handed to the pool and not finished yet

    # -- intake -----------------------------------------------------------------------
    def submit(self, alert: Alert) -> list[str]:
        """Record what this alert (and any escalation it completes) means for the PSAP.

        Returns the ids of the forwards created; none when policy says no or it is a repeat.
        """
        with self._correlate:
            escalations = self.correlator.observe(alert)
        created = [fid for item in (alert, *escalations) if (fid := self._accept(item)) is not None]
        if created:
            self._notify()
        return created

    def _recall(self, site: str, since: datetime, until: datetime) -> list[Alert]:
        try:
            return site_alerts(self.engine, site, since, until)
        except Exception:  # correlation then uses what this process saw; the alert still goes
            log.exception("ng112: could not read the recent alerts of site %s", site)
            return []

    def _accept(self, alert: Alert) -> str | None:
        # A replica that opened the same incident at the same moment makes the first try fail;
        # the second try then sees its incident (or its copy of this very alert).
        for _ in range(2):
            try:
                return self._record(alert)
            except IntegrityError:
                continue
        return None

    def _record(self, alert: Alert) -> str | None:
        now = self.clock()
        forward_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            if conn.execute(select(forwards.c.id).where(forwards.c.alert_id == alert.id)).first():
                return None  # the same alert again (MQTT redelivery): one forward only
            known = conn.execute(select(incidents).where(incidents.c.incident == alert.incident)).first()
            confirm_by = None
            if known is None:
                wanted, why = self.config.wants(alert)
                if alert.state == "end" or not wanted:
                    log.debug("not forwarded: %s", why)
                    return None
                policy = self.config.policy_for(alert.site)
                conn.execute(
                    insert(incidents).values(
                        incident=alert.incident,
                        site=alert.site,
                        node_id=alert.node_id,
                        token=new_token(),
                        mode=policy.mode,
                        created_at=now,
                    )
                )
                state = "awaiting_confirm" if policy.mode == "confirm" else "pending"
                if state == "awaiting_confirm":
                    confirm_by = now + timedelta(seconds=policy.confirm_timeout_s)
            else:
                state = "pending"  # an incident already on its way: its updates and end follow it
            ordinal = conn.execute(
                select(func.count()).select_from(forwards).where(forwards.c.incident == alert.incident)
            ).scalar_one()
            conn.execute(
                insert(forwards).values(
                    id=forward_id,
                    incident=alert.incident,
                    alert_id=alert.id,
                    ordinal=ordinal,
                    site=alert.site,
                    node_id=alert.node_id,
                    kind=alert.kind,
                    severity=alert.severity,
                    alert_state=alert.state,
                    status=alert.status,
                    alert=alert.model_dump(mode="json", by_alias=True),
                    state=state,
                    created_at=now,
                    due_at=now,
                    confirm_by=confirm_by,
                    attempts=0,
                )
            )
        self._changed_row(forward_id)
        return forward_id

    # -- operator decisions -------------------------------------------------------------
    def confirm(self, forward_id: str, by: str) -> bool:
        done = claim(self.engine, forward_id, ("awaiting_confirm",), "pending", decided_by=by, due_at=self.clock())
        if done:
            self._changed_row(forward_id)
            self._notify()
        return done

    def dismiss(self, forward_id: str, by: str) -> bool:
        done = claim(
            self.engine, forward_id, ("awaiting_confirm",), "dismissed", decided_by=by, reason="dismissed by operator"
        )
        if done:
            self._changed_row(forward_id)
        return done

    # -- dispatch -----------------------------------------------------------------------
    def run_due(self) -> int:
        """Send every forward that is due now, inline. Returns how many were attempted."""
        claimed = self._claim_due()
        for row in claimed:
            self._send(row)
        return len(claimed)

    def _expire_confirmations(self, now: datetime) -> None:
        with self.engine.connect() as conn:
            waiting = conn.execute(
                select(forwards.c.id, forwards.c.severity).where(
                    forwards.c.state == "awaiting_confirm", forwards.c.confirm_by <= now
                )
            ).all()
        for forward_id, severity in waiting:
            if severity == "Extreme":  # nobody answered, and lives may be at stake: send it
                claim(
                    self.engine,
                    forward_id,
                    ("awaiting_confirm",),
                    "pending",
                    decided_by="timeout: Extreme goes automatically",
                    due_at=now,
                )
            else:
                claim(
                    self.engine,
                    forward_id,
                    ("awaiting_confirm",),
                    "unconfirmed",
                    reason="no operator decision before the timeout",
                )
            self._changed_row(forward_id)

    def _take_back_lapsed(self, now: datetime) -> None:
        for forward_id, state in take_back_lapsed(self.engine, now, self.config.max_attempts):
            log.warning("ng112: forward %s was claimed but never finished (sender died?); now %s", forward_id, state)
            self._changed_row(forward_id)

    def _claim_due(self, limit: int | None = None) -> list[Any]:
        now = self.clock()
        self._expire_confirmations(now)
        self._take_back_lapsed(now)
        # A send ends within Timer F (RFC 3261 §17.1.2.2), so a claim held well past it is lost.
        held_until = now + timedelta(seconds=self.config.timers.f + CLAIM_MARGIN_S)
        with self.engine.connect() as conn:
            due = conn.execute(
                select(forwards)
                .where(forwards.c.state.in_(("pending", "retrying")), forwards.c.due_at <= now)
                .order_by(forwards.c.incident, forwards.c.ordinal)
            ).all()
            busy = {
                (row.incident, row.ordinal)
                for row in conn.execute(
                    select(forwards.c.incident, forwards.c.ordinal).where(forwards.c.state.in_(OPEN_STATES))
                )
            }
        claimed: list[Any] = []
        for row in due:
            if limit is not None and len(claimed) >= limit:
                break
            # Messages of one incident go in order: the Alert first, each Update after it.
            if any(inc == row.incident and ordinal < row.ordinal for inc, ordinal in busy):
                continue
            if claim(self.engine, row.id, ("pending", "retrying"), "sending", due_at=held_until):
                claimed.append(row)
        return claimed

    def _send(self, row: Any) -> None:
        alert = Alert.model_validate(row.alert)
        with self.engine.connect() as conn:
            incident = conn.execute(select(incidents).where(incidents.c.incident == row.incident)).one()
            first = conn.execute(
                select(forwards.c.state).where(forwards.c.incident == row.incident, forwards.c.ordinal == 0)
            ).scalar_one()
        if row.ordinal > 0 and first in ("dismissed", "unconfirmed"):
            self._finish(row.id, state=first, reason=f"the incident's first alert was {first}")
            return
        references = None
        msg_type: MsgType = "Alert"
        if incident.first_identifier is not None:
            references = CapRef(incident.first_sender, incident.first_identifier, incident.first_sent)
            msg_type = "Cancel" if alert.state == "end" else "Update"
        elif alert.state == "end":
            self._finish(row.id, state="skipped", reason="the incident ended before any message reached the PSAP")
            return
        readings_uri = None
        if self.config.readings_base_url:
            base = self.config.readings_base_url.rstrip("/")
            readings_uri = f"{base}/ng112/incidents/{row.incident}/readings?token={incident.token}"
        try:
            call = compose(
                alert,
                self.caller,
                msg_type=msg_type,
                references=references,
                readings_uri=readings_uri,
                schema=self.schema,
                call_id=f"{row.incident}-{row.ordinal}@s4edge",
            )
        except (CapError, LocationError) as exc:
            # The content is wrong, so a retry would send the same wrong thing: an operator must look.
            self._finish(row.id, state="failed", reason=f"not sent: {exc}", attempts=row.attempts, msg_type=msg_type)
            return
        sent_at = self.clock()
        delivery = self.transaction.send(call.message, self.target)
        attempts = row.attempts + 1
        values: dict[str, Any] = {
            "msg_type": msg_type,
            "cap_identifier": call.cap.ref.identifier,
            "sent_at": sent_at,
            "attempts": attempts,
            "transport": delivery.transport,
            "code": delivery.code,
            "reason": delivery.detail,
            "latency_ms": None if delivery.latency_s is None else delivery.latency_s * 1000,
            "answered_at": self.clock() if delivery.response else None,
            "alertmsg_error": str(delivery.response.alert_msg_error)
            if delivery.response and delivery.response.alert_msg_error
            else None,
        }
        if delivery.ok:
            if msg_type == "Alert":
                with self.engine.begin() as conn:
                    conn.execute(
                        update(incidents)
                        .where(incidents.c.incident == row.incident)
                        .values(
                            first_sender=call.cap.ref.sender,
                            first_identifier=call.cap.ref.identifier,
                            first_sent=call.cap.ref.sent,
                        )
                    )
            self._finish(row.id, state="delivered", **values)
        elif _retryable(delivery) and attempts < self.config.max_attempts:
            delay = min(self.config.backoff_s * 2 ** (attempts - 1), self.config.backoff_max_s)
            self._finish(row.id, state="retrying", due_at=self.clock() + timedelta(seconds=delay), **values)
        else:
            self._finish(row.id, state="failed", **values)
        log.info("ng112 %s %s for %s: %s %s", msg_type, values.get("reason"), row.incident, delivery.outcome, attempts)

    def _finish(self, forward_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(forwards).where(forwards.c.id == forward_id).values(**values))
        self._changed_row(forward_id)

    def _changed_row(self, forward_id: str) -> None:
        with self._changed:
            self._changed.notify_all()
        if self.on_change is not None:
            with self.engine.connect() as conn:
                row = conn.execute(select(forwards).where(forwards.c.id == forward_id)).first()
            if row is not None:
                self.on_change(forward_dict(row))

    # -- background loop ----------------------------------------------------------------
    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, states: tuple[str, ...], timeout: float, *, forward_id: str | None = None, alert_id: str | None = None
    ) -> dict[str, Any] | None:
        """Block until the forward (by its id or its alert's id) is in one of ``states``, or the
        timeout passes; returns its row as it then is (None if there is no such forward)."""
        which = forwards.c.id == forward_id if forward_id is not None else forwards.c.alert_id == alert_id
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            with self._changed:
                while True:
                    with self.engine.connect() as conn:
                        row = conn.execute(select(forwards).where(which)).first()
                    if (row is not None and row.state in states) or deadline.is_set():
                        return forward_dict(row) if row is not None else None
                    self._changed.wait(0.05)
        finally:
            timer.cancel()

    def reconcile(self) -> int:
        """Submit stored alerts that the after-commit hook never delivered here (a crash
        between commit and ``submit``, or a failed ``submit``). Returns how many."""
        horizon = self.config.reconcile_horizon_s
        if horizon <= 0:
            return 0
        missed = unforwarded(self.engine, self.config, self.clock() - timedelta(seconds=horizon))
        for alert in missed:
            log.warning("ng112: alert %s (%s) was stored but never submitted; submitting it", alert.id, alert.incident)
            self.submit(alert)
        return len(missed)

    def start(self) -> None:
        if self._loop is not None:
            return
        try:
            self.reconcile()
        except Exception:  # forwarding new alerts matters more than the look back
            log.exception("ng112: could not look for stored alerts that were never submitted")
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="ng112-send")
        self._loop = threading.Thread(target=self._run, name="ng112-forwarder", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        self._stop.set()
        self._notify()
        if self._loop is not None:
            self._loop.join(timeout=5)
            self._loop = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run(self) -> None:
        while not self._stop.is_set():
            # Claim only what a free worker sends at once: a claim queued behind slow sends
            # could lapse and be taken back while still waiting its turn.
            free = self.config.workers - self._sending
            claimed = []
            if free > 0:
                try:
                    claimed = self._claim_due(free)
                except Exception:  # a database hiccup must not end forwarding for good
                    log.exception("ng112: could not read due forwards; trying again")
            assert self._pool is not None
            for row in claimed:
                with self._changed:
                    self._sending += 1
                self._pool.submit(self._send_logged, row)
            with self._changed:
                if not claimed and not self._stop.is_set():
                    self._changed.wait(0.25)

    def _send_logged(self, row: Any) -> None:
        try:
            self._send_or_record(row)
        finally:
            with self._changed:
                self._sending -= 1
                self._changed.notify_all()

    def _send_or_record(self, row: Any) -> None:
        try:
            self._send(row)
        except Exception as exc:  # never drop a row; if even this fails, its claim lapses
            log.exception("ng112: sending forward %s failed", row.id)
            attempts = row.attempts + 1
            final = attempts >= self.config.max_attempts
            self._finish(
                row.id,
                state="failed" if final else "retrying",
                attempts=attempts,
                due_at=self.clock() + timedelta(seconds=self.config.backoff_s),
                reason=f"internal error: {exc}",
            )
