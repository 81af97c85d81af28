"""Forward alerts to the PSAP: policy, confirm-or-auto, one call per incident (Alert, then
Update/Cancel referencing it, the Updates paced by ``pacing.py``), retries with backoff, and
a record of every outcome.

The forwarder is fed from the store: ingest commits a forward job with each alert of a
kind NG112 forwards, and ``drain`` takes the jobs, records the forwards they come to and
deletes them, in one transaction. ``submit`` records one alert's forwards directly.
Neither sends; sending happens in ``run_due`` (called inline by tests with an injected
clock, or by the background loop that ``start`` runs, which drains as well). A row is
claimed with a conditional UPDATE, so several aggregator replicas may share one database.

The loop's queries hold the GIL that the ingest's network thread needs in the same process,
so it looks when told there is something to look at (``wake``: ingest committed jobs, an
operator confirmed, a send ended that others wait for) and otherwise once per ``JOB_POLL_S``,
for jobs another replica committed or a crash left, retries come due and lapsed claims.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from sqlalchemy import Engine, and_, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from s4edge.cloud_sync.aggregator.store import forward_jobs
from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.cap import CapError, CapRef, MsgType, cap_ref
from s4edge.cloud_sync.ng112.correlation import Correlator
from s4edge.cloud_sync.ng112.desk import Clock, ForwardDesk, OnChange
from s4edge.cloud_sync.ng112.jobs import alert_from_row, queued, site_alerts
from s4edge.cloud_sync.ng112.pacing import Pacing, held_back
from s4edge.cloud_sync.ng112.pidf import LocationError
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.readings import readings_link
from s4edge.cloud_sync.ng112.records import (
    OPEN_STATES,
    claim,
    forwards,
    incidents,
    new_token,
    take_back_lapsed,
)
from s4edge.cloud_sync.ng112.sip import parse_target
from s4edge.cloud_sync.ng112.transport import Delivery, Transaction

log = logging.getLogger(__name__)
# Worth another try: the network or the PSAP's load, not the content (RFC 3261 §21.5, §21.4.9),
# and a busy PSAP (486 Busy Here, 600 Busy Everywhere: §21.4.24, §21.6.1).
RETRY_CODES = frozenset({408, 480, 486, 500, 503, 504, 600})
# RFC 3261 §20.33: with these a Retry-After says when the PSAP expects to take the call: tried again then.
RETRY_AFTER_CODES = frozenset({404, 413, 603})
# Beyond Timer F, time to compose the message and record the outcome before a claim lapses.
CLAIM_MARGIN_S = 30.0
JOB_BATCH = 100  # forward jobs taken in one transaction
# How often an idle forwarder looks for jobs nobody woke it for (another replica's, a crash's),
# and for retries come due: the most this adds to such a forward's way to the PSAP.
JOB_POLL_S = 1.0
STOP_WAIT_S = 60.0  # beyond Timer F: the sends in flight finish before ``stop`` returns


RECORD_TRIES = 5  # 0.5 + 1 + 2 + 4 s of waiting: within CLAIM_MARGIN_S


class _Delivered(Exception):
    """The PSAP took the call and the store would not record it: never to be taken for a
    failed send (which is retried, and would call the PSAP again)."""


def _sent_as(row: Any, first_sender: str) -> CapRef:
    """The reference of a delivered message (CAP 1.2 §3.2.1), as it went out. One delivered before
    its sender was recorded went from the node of its incident's Alert, whose sender is on record;
    its identifier and time come from its alert, as they did then (``cap_ref``)."""
    if row.cap_sender is not None:
        return CapRef(row.cap_sender, row.cap_identifier, row.cap_sent)
    return cap_ref(Alert.model_validate(row.alert), first_sender)


def _retryable(delivery: Delivery) -> bool:
    if delivery.outcome in ("timeout", "closed", "unreachable", "garbage"):
        return True
    if delivery.code in RETRY_AFTER_CODES and delivery.response is not None:
        return delivery.response.retry_after is not None
    return delivery.code in RETRY_CODES


class Forwarder(ForwardDesk):
    def __init__(
        self,
        engine: Engine,
        config: Ng112Config,
        *,
        clock: Clock = lambda: datetime.now(UTC),
        transaction: Transaction | None = None,
        tls_context: ssl.SSLContext | None = None,
        schema: etree.XMLSchema | None = None,
        on_change: OnChange | None = None,
        poll_s: float = JOB_POLL_S,
    ) -> None:
        super().__init__(engine, clock=clock, on_change=on_change)
        self.config = config
        self.target = parse_target(config.psap)
        self.transaction = transaction or Transaction(
            config.timers, tls_context, redirect_hosts=frozenset(config.redirect_hosts)
        )
        self.schema = schema
        self.caller = Caller(
            sender_domain=config.sender_domain,
            sender=config.sender,
            request_uri=config.request_uri,
            location_method=config.location_method,
            language=config.language,
        )
        self.correlator = Correlator(list(config.correlation), recall=self._recall)
        self._correlate = threading.Lock()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        # Guarded by ``_changed``: what the loop has to look at before its next poll. There may be
        # new jobs (ingest committed some), or a forward may have come due (a send ended: its
        # worker is free, and its incident's next message may go).
        self._jobs_woken = False
        self._due_woken = False
        self._polled_at = -float("inf")  # time.monotonic() of the loop's last full turn
        self._sending = 0  # rows handed to the pool and not finished yet
        self._in_flight: set[str] = set()  # their incidents (one row each: only an incident's head goes)
        self._followed: set[str] = set()  # of those, incidents that got another forward meanwhile
        self.poll_s = poll_s
        self._drain_failures = FailureLog(log, "ng112: taking forward jobs")
        self._claim_failures = FailureLog(log, "ng112: claiming due forwards")

    # -- intake -----------------------------------------------------------------------
    def drain(self, limit: int = JOB_BATCH) -> int:
        """Take up to ``limit`` forward jobs, oldest first: record what each job's alert means
        for the PSAP and delete the jobs, in one transaction. Returns how many were taken."""
        rows = queued(self.engine, limit)
        batch: list[Alert] = []
        for row in rows:
            try:
                batch.append(alert_from_row(row))
            except ValueError as exc:  # would stop every job behind it: an operator must see it instead
                self._record_unreadable(row, exc)
        if batch:
            self._take(batch, jobs=[alert.id for alert in batch])
        return len(rows)

    def _record_unreadable(self, row: Any, exc: ValueError) -> None:
        log.error("ng112: stored alert %s cannot be read back (%s); its forward is marked failed", row.id, exc)
        now, forward_id = self.clock(), str(uuid.uuid4())
        with self.engine.begin() as conn:
            recorded = conn.execute(select(forwards.c.id).where(forwards.c.alert_id == row.id)).first()
            if recorded is None:
                ordinal = conn.execute(
                    select(func.count()).select_from(forwards).where(forwards.c.incident == row.incident)
                ).scalar_one()
                conn.execute(
                    insert(forwards).values(
                        id=forward_id, incident=row.incident, alert_id=row.id, ordinal=ordinal, site=row.site,
                        node_id=row.node_id, kind=row.kind, severity=row.severity, alert_state=row.state,
                        status=row.status, alert={}, state="failed", created_at=now, due_at=now, attempts=0,
                        reason=f"the stored alert cannot be read back: {exc}"[:1000],
                    )
                )  # fmt: skip
            conn.execute(delete(forward_jobs).where(forward_jobs.c.alert_id == row.id))
        if recorded is None:
            self._changed_row(forward_id)

    def submit(self, alert: Alert) -> list[str]:
        """Record what this alert (and any escalation it completes) means for the PSAP.

        Returns the ids of the forwards created; none when policy says no or it is a repeat.
        """
        return self._take([alert])

    def _take(self, batch: list[Alert], jobs: list[str] | None = None) -> list[str]:
        with self._correlate:
            escalations = [found for alert in batch for found in self.correlator.observe(alert)]
        try:
            created = self._record_all([*batch, *escalations], jobs or [])
        except Exception:
            with self._correlate:  # so that taking these jobs again raises the escalations again
                self.correlator.forget(escalations)
            raise
        if created:
            with self._changed:  # an incident's next message, recorded while its last is sent
                self._followed |= {item.incident for item in [*batch, *escalations]} & self._in_flight
            self.announce(created)
        return created

    def _record_all(self, items: list[Alert], jobs: list[str]) -> list[str]:
        try:
            return self._record_once(items, jobs)
        except IntegrityError:
            # A replica opened the same incident at the same moment: this second try sees its
            # incident (or its copy of these very alerts).
            return self._record_once(items, jobs)

    def _record_once(self, items: list[Alert], jobs: list[str]) -> list[str]:
        """One transaction for the lot, in a few statements whatever its size: a backlog of
        jobs must not cost a round of queries per alert."""
        with self.engine.begin() as conn:
            now = self.clock()
            ids, named = [item.id for item in items], {item.incident for item in items}
            # the same alert again (MQTT redelivery, a job taken twice): one forward only
            done = set(conn.execute(select(forwards.c.alert_id).where(forwards.c.alert_id.in_(ids))).scalars())
            known = set(conn.execute(select(incidents.c.incident).where(incidents.c.incident.in_(named))).scalars())
            count = select(forwards.c.incident, func.count()).where(forwards.c.incident.in_(named))
            ordinals = {incident: n for incident, n in conn.execute(count.group_by(forwards.c.incident))}
            pacing = Pacing(conn, named, now, self.config.update_interval_s)
            new_incidents: list[dict[str, Any]] = []
            new_forwards: list[dict[str, Any]] = []
            for alert in items:
                if alert.id in done:
                    continue
                done.add(alert.id)
                row = self._forward(alert, now, known, new_incidents)
                if row is not None:
                    row["ordinal"] = ordinals.get(alert.incident, 0)
                    ordinals[alert.incident] = row["ordinal"] + 1
                    pacing.place(alert, row)
                    new_forwards.append(row)
            if new_incidents:
                conn.execute(insert(incidents), new_incidents)
            if new_forwards:
                conn.execute(insert(forwards), new_forwards)
            if jobs:
                conn.execute(delete(forward_jobs).where(forward_jobs.c.alert_id.in_(jobs)))
        return [row["id"] for row in new_forwards]

    def _recall(self, site: str, since: datetime, until: datetime) -> list[Alert]:
        try:
            return site_alerts(self.engine, site, since, until)
        except Exception:  # correlation then uses what this process saw; the alert still goes
            log.exception("ng112: could not read the recent alerts of site %s", site)
            return []

    def _forward(
        self, alert: Alert, now: datetime, known: set[str], new_incidents: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The forward row this alert comes to (its ordinal still to set), or None when policy
        says no; a new incident it opens joins ``known`` and ``new_incidents``."""
        confirm_by = None
        if alert.incident not in known:
            wanted, why = self.config.wants(alert)
            if alert.state == "end" or not wanted:
                log.debug("not forwarded: %s", why)
                return None
            policy = self.config.policy_for(alert.site)
            known.add(alert.incident)
            new_incidents.append(
                {
                    "incident": alert.incident,
                    "site": alert.site,
                    "node_id": alert.node_id,
                    "token": new_token(),
                    "link_key": new_token(),
                    "mode": policy.mode,
                    "created_at": now,
                }
            )
            state = "awaiting_confirm" if policy.mode == "confirm" else "pending"
            if state == "awaiting_confirm":
                confirm_by = now + timedelta(seconds=policy.confirm_timeout_s)
        else:
            state = "pending"  # an incident already on its way: its updates and end follow it
        return {
            "id": str(uuid.uuid4()),
            "incident": alert.incident,
            "alert_id": alert.id,
            "site": alert.site,
            "node_id": alert.node_id,
            "kind": alert.kind,
            "severity": alert.severity,
            "alert_state": alert.state,
            "status": alert.status,
            "alert": alert.model_dump(mode="json", by_alias=True),
            "state": state,
            "created_at": now,
            "due_at": now,
            "confirm_by": confirm_by,
            "attempts": 0,
            "reason": None,
        }

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
                select(forwards.c.id, forwards.c.incident, forwards.c.severity).where(
                    forwards.c.state == "awaiting_confirm", forwards.c.confirm_by <= now
                )
            ).all()
            if not waiting:
                return
            # An incident that rose to Extreme while its first alert waited counts as Extreme:
            # its Update waits behind that alert, and would end unconfirmed with it.
            rose = select(forwards.c.incident).where(
                forwards.c.incident.in_([row.incident for row in waiting]),
                forwards.c.severity == "Extreme",
                forwards.c.state.in_(OPEN_STATES),
            )
            risen = set(conn.execute(rose).scalars())
        for forward_id, incident, severity in waiting:
            if severity == "Extreme" or incident in risen:  # nobody answered, and lives may be at stake: send it
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

    def _claim_due(self, limit: int | None = None, *, sweep: bool = True) -> list[Any]:
        """``sweep``: first settle unanswered confirmations and take back lapsed claims, which
        time alone brings about: the loop does it once per poll, not on every turn."""
        now = self.clock()
        if sweep:
            self._expire_confirmations(now)
            self._take_back_lapsed(now)
        # A send ends within Timer F (RFC 3261 §17.1.2.2), so a claim held well past it is lost.
        held_until = now + timedelta(seconds=self.config.timers.f + CLAIM_MARGIN_S)
        # Messages of one incident go in order, the Alert first and each Update after it: only
        # an incident's first open forward may go, and only once it is due. The database picks
        # those, so a backlog of thousands costs one query here, not a scan per row.
        head = (
            select(
                forwards.c.incident,
                func.min(forwards.c.ordinal).label("ordinal"),
                func.count().label("open_in_incident"),  # more than 1: the next waits for this one
            )
            .where(forwards.c.state.in_(OPEN_STATES))
            .group_by(forwards.c.incident)
            .subquery()
        )
        query = (
            select(forwards, head.c.open_in_incident)
            .join(head, and_(forwards.c.incident == head.c.incident, forwards.c.ordinal == head.c.ordinal))
            .where(forwards.c.state.in_(("pending", "retrying")), forwards.c.due_at <= now)
            .order_by(forwards.c.incident)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            due = conn.execute(query).all()
        if not due:
            return []
        # All in one conditional UPDATE: a row another replica took meanwhile is not returned,
        # nor one it took, failed to send and put back (its attempts moved on, its due_at with
        # its backoff or a PSAP's Retry-After): what was read here no longer holds for it.
        # One transaction, not one per row: on SQLite each holds the one write lock ingest needs.
        taken = (
            update(forwards)
            .where(
                tuple_(forwards.c.id, forwards.c.attempts).in_([(row.id, row.attempts) for row in due]),
                forwards.c.state.in_(("pending", "retrying")),
                forwards.c.due_at <= now,
            )
            .values(state="sending", due_at=held_until)
            .returning(forwards.c.id)
        )
        with self.engine.begin() as conn:
            won = set(conn.execute(taken).scalars())
        return [row for row in due if row.id in won]

    def _send(self, row: Any) -> None:
        alert = Alert.model_validate(row.alert)
        if (later := held_back(self.engine, row, self.clock(), self.config.update_interval_s)) is not None:
            self._finish(row.id, state="pending", due_at=later)  # it waits on: no attempt made
            return
        with self.engine.connect() as conn:
            incident = conn.execute(select(incidents).where(incidents.c.incident == row.incident)).one()
            first = conn.execute(
                select(forwards.c.state).where(forwards.c.incident == row.incident, forwards.c.ordinal == 0)
            ).scalar_one()
            latest = conn.execute(  # the last Update the PSAP has: superseded or cancelled with the Alert
                select(forwards.c.cap_sender, forwards.c.cap_identifier, forwards.c.cap_sent, forwards.c.alert)
                .where(forwards.c.incident == row.incident, forwards.c.state == "delivered")
                .where(forwards.c.msg_type == "Update")
                .order_by(forwards.c.ordinal.desc())
                .limit(1)
            ).first()
        # Nothing of the incident reached the PSAP: what follows its first alert goes its way,
        # except that an incident which rose to Extreme once nobody answered for it goes now,
        # as Extreme goes at the timeout (policy.py). An operator's dismissal stands.
        rose = first == "unconfirmed" and alert.severity == "Extreme"
        if row.ordinal > 0 and first in ("dismissed", "unconfirmed") and incident.first_identifier is None and not rose:
            self._finish(row.id, state=first, reason=f"the incident's first alert was {first}")
            return
        references: list[CapRef] = []
        msg_type: MsgType = "Alert"
        if incident.first_identifier is not None:
            # CAP 1.2 §3.2.1: an Update supersedes, a Cancel cancels, the messages it references:
            # the Alert and the last Update, which superseded those before it
            references.append(CapRef(incident.first_sender, incident.first_identifier, incident.first_sent))
            if latest is not None:
                references.append(_sent_as(latest, incident.first_sender))
            msg_type = "Cancel" if alert.state == "end" else "Update"
        elif alert.state == "end":
            self._finish(row.id, state="skipped", reason="the incident ended before any message reached the PSAP")
            return
        readings_uri = None
        if self.config.readings_base_url:
            expires = self.clock() + timedelta(seconds=self.config.readings_link_ttl_s)
            key = incident.link_key or self.link_key_of(row.incident)
            readings_uri = readings_link(self.config.readings_base_url, row.incident, key, expires)
        # A retry is the same CAP message as its earlier attempts (CAP 1.2 §3.2.1: sender, identifier
        # and sent name a message), which the PSAP may hold already: the sender it was first composed
        # with, not the config's, which may have changed since. Identifier and sent come from the alert.
        caller = self.caller if row.cap_sender is None else replace(self.caller, sender=row.cap_sender)
        try:
            # RFC 3261 §8.1.1.4: only a retry after a response that asks for an amendment (§8.1.3.5:
            # 401, 407, 413, 415, 416, 420) is not a new request; one after a timeout, a 503 or a 486
            # is, so each attempt has a Call-ID, From tag (§8.1.1.3) and CSeq (§8.1.1.5) of its own,
            # drawn by compose. A finished request's Call-ID again went unanswered by sipp as the PSAP.
            call = compose(
                alert,
                caller,
                msg_type=msg_type,
                references=references,
                readings_uri=readings_uri,
                schema=self.schema,
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
            "cap_sender": call.cap.ref.sender,
            "cap_identifier": call.cap.ref.identifier,
            "cap_sent": call.cap.ref.sent,
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
            first = call.cap.ref if msg_type == "Alert" else None
            self._record_delivery(row, first, values)
        elif _retryable(delivery) and attempts < self.config.max_attempts:
            delay = min(self.config.backoff_s * 2 ** (attempts - 1), self.config.backoff_max_s)
            if delivery.response and (asked := delivery.response.retry_after) is not None:
                # RFC 3261 §21.5.4, §20.33: a busy PSAP says when to come back; not before, up to a cap
                delay = max(delay, min(asked, self.config.retry_after_max_s))
                values["reason"] = f"{delivery.detail}, Retry-After {asked} s"
            self._finish(row.id, state="retrying", due_at=self.clock() + timedelta(seconds=delay), **values)
        else:
            self._finish(row.id, state="failed", **values)
            if values["alertmsg_error"]:
                # RFC 8876 §5.1: 425, the PSAP could not use the alert; the same content would fail again.
                log.warning(
                    "ng112 %s for %s refused by the PSAP: %s, AlertMsg-Error %s",
                    msg_type, row.incident, delivery.detail, values["alertmsg_error"],
                )  # fmt: skip
        log.info("ng112 %s %s for %s: %s %s", msg_type, values.get("reason"), row.incident, delivery.outcome, attempts)

    def _record_delivery(self, row: Any, first: CapRef | None, values: dict[str, Any]) -> None:
        """The PSAP has the call: that must be on record, or a retry would call it again. The
        incident's reference (for its Updates) and the outcome go in one transaction, tried
        again while the store is briefly away, within the claim's margin."""
        delay = 0.5
        for attempt in range(RECORD_TRIES):
            try:
                with self.engine.begin() as conn:
                    if first is not None:
                        conn.execute(
                            update(incidents)
                            .where(incidents.c.incident == row.incident)
                            .values(first_sender=first.sender, first_identifier=first.identifier, first_sent=first.sent)
                        )
                    conn.execute(update(forwards).where(forwards.c.id == row.id).values(state="delivered", **values))
                break
            except SQLAlchemyError as exc:
                if attempt == RECORD_TRIES - 1:  # left 'sending': its claim lapses, and it goes again
                    raise _Delivered(f"{row.id}: delivered, not recorded: {type(exc).__name__}") from exc
                log.warning("ng112: %s was delivered, but the store did not take it; again in %.1f s", row.id, delay)
                time.sleep(delay)
                delay *= 2
        self._changed_row(row.id)

    def link_key_of(self, incident: str) -> str:
        """The key of an incident's readings links, made for one from before keys (whose token
        the CAP carried, so it may not sign); the first of two replicas to make it wins."""
        with self.engine.begin() as conn:
            where = (incidents.c.incident == incident) & incidents.c.link_key.is_(None)
            conn.execute(update(incidents).where(where).values(link_key=new_token()))
            key: str = conn.execute(select(incidents.c.link_key).where(incidents.c.incident == incident)).scalar_one()
        return key

    def _finish(self, forward_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(forwards).where(forwards.c.id == forward_id).values(**values))
        self._changed_row(forward_id)

    def _changed_row(self, forward_id: str) -> None:
        self.announce([forward_id])

    # -- background loop ----------------------------------------------------------------
    def wake(self) -> None:
        """There may be work now (ingest committed forward jobs, a forward came due): the
        loop looks at once instead of at its next poll. Cheap; call it from any thread."""
        with self._changed:
            self._jobs_woken = self._due_woken = True
            self._changed.notify_all()

    def start(self) -> None:
        """Start draining jobs and sending; jobs left by a crash are the first taken."""
        if self._loop is not None:
            return
        self._stop.clear()
        self._loop = threading.Thread(target=self._run, name="ng112-forwarder", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        """Stop claiming, and return once the sends in flight have finished."""
        self._stop.set()
        self.wake()
        if self._loop is not None:
            self._loop.join(STOP_WAIT_S)
            if self._loop.is_alive():
                log.warning("ng112: the forwarder did not stop within %.0f s; its claims lapse", STOP_WAIT_S)
            self._loop = None

    def _run(self) -> None:
        # The pool is the loop's own and ends with it: nothing is handed to it once it shuts down.
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="ng112-send") as pool:
            while not self._stop.is_set():
                with self._changed:
                    jobs, self._jobs_woken, self._due_woken = self._jobs_woken, False, False
                # A turn costs a few queries, each holding the GIL that ingest's network thread
                # needs: a woken turn does only what it was woken for, a poll does it all (jobs
                # nobody woke us for, retries come due, lapsed claims, unanswered confirmations).
                poll = time.monotonic() - self._polled_at >= self.poll_s
                if poll:
                    self._polled_at = time.monotonic()
                taken = self._drain_logged() if jobs or poll else 0
                # Claim only what a free worker sends at once: a claim queued behind slow sends
                # could lapse and be taken back while still waiting its turn.
                free = self.config.workers - self._sending
                claimed = self._claim_logged(free, poll) if free > 0 and not self._stop.is_set() else []
                for row in claimed:
                    with self._changed:
                        self._sending += 1
                        self._in_flight.add(row.incident)
                    pool.submit(self._send_logged, row)
                with self._changed:
                    if taken >= JOB_BATCH:  # more jobs may be waiting
                        self._jobs_woken = True
                    else:
                        self._changed.wait_for(
                            lambda: self._jobs_woken or self._due_woken or self._stop.is_set(),
                            max(0.0, self._polled_at + self.poll_s - time.monotonic()),
                        )

    def _drain_logged(self) -> int:
        try:
            taken = self.drain()
        except Exception as exc:  # a database hiccup must not end forwarding for good; the jobs stay
            self._drain_failures.failed(exc)
            return 0
        self._drain_failures.ok()
        return taken

    def _claim_logged(self, free: int, sweep: bool) -> list[Any]:
        try:
            claimed = self._claim_due(free, sweep=sweep)
        except Exception as exc:  # a database hiccup must not end forwarding for good
            self._claim_failures.failed(exc)
            return []
        self._claim_failures.ok()
        return claimed

    def _send_logged(self, row: Any) -> None:
        try:
            self._send_or_record(row)
        finally:
            with self._changed:
                # Another claim is worth its queries only if a due forward may have been left
                # for want of a worker, or this incident's next message waits for this one.
                if self._sending == self.config.workers or row.open_in_incident > 1 or row.incident in self._followed:
                    self._due_woken = True
                self._sending -= 1
                self._in_flight.discard(row.incident)
                self._followed.discard(row.incident)
                self._changed.notify_all()

    def _send_or_record(self, row: Any) -> None:
        try:
            self._send(row)
        except _Delivered:
            log.exception("ng112: forward %s reached the PSAP, but is not on record; its claim lapses", row.id)
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
