"""The alert rule engine: thresholds with hysteresis and debounce, and the incident
lifecycle (new → update → end under one incident id), with flap suppression at the
source: an incident ends only after its condition stayed absent for the kind's hold
time, and a re-trigger within the cooldown after an end continues it as an ``update``.

Pure logic: time comes in as arguments (monotonic seconds), alerts go out as
``AlertDraft`` to an ``Emit`` callable. The node's publisher (edge/app.py) stamps
identity, ``seq``, ``ts`` and location onto a draft and puts it in the outbox.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from s4edge.cloud_sync.messages import (
    SEVERITIES,
    Alert,
    AlertState,
    AlertStatus,
    Detection,
    Location,
    Measurement,
    ModelRef,
    Severity,
    new_id,
)


@dataclass(frozen=True)
class AlertDraft:
    """Everything an alert says that a rule knows; the node adds who and where."""

    kind: str
    severity: Severity
    state: AlertState
    incident: str
    title: str | None = None
    detail: str | None = None
    zone: str | None = None
    measurements: tuple[Measurement, ...] = ()
    detection: Detection | None = None
    model: ModelRef | None = None
    status: AlertStatus = "Actual"

    def stamped(self, node_id: str, site: str, where: Location, node_status: AlertStatus = "Actual") -> Alert:
        """The alert this draft becomes on node ``node_id`` at ``where`` (whose zone stands
        where the draft names none), ``seq`` still 0: the outbox gives it one as it stores it."""
        return Alert(
            node_id=node_id,
            site=site,
            seq=0,
            kind=self.kind,
            severity=self.severity,
            state=self.state,
            incident=self.incident,
            # a drill node never sends Actual, whatever a rule asked for (CAP 1.2 <status>)
            status=self.status if node_status == "Actual" else node_status,
            location=Location(lat=where.lat, lon=where.lon, zone=self.zone or where.zone),
            title=self.title,
            detail=self.detail,
            measurements=list(self.measurements),
            detection=self.detection,
            model=self.model,
        )


Emit = Callable[[AlertDraft], None]


class AlertNotStored(Exception):
    """What an ``Emit`` raises when the node could not take an alert: its outbox cannot store
    it (a full disk) and as many as it keeps in memory wait already. The node's fault, which
    it reports as its outbox's (``disk_full``, ``outbox``), never the source's: a source that
    gets it counts no fault of its own, and the book, unchanged, raises it again at the next
    report."""


def severity_rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


@dataclass
class _Incident:
    draft: AlertDraft
    opened_at: float
    last_seen: float
    last_emitted: float
    absent_since: float | None = None  # the condition was reported gone; the end waits for the hold
    end_detail: str | None = None


@dataclass(frozen=True)
class _Ended:
    """An incident whose condition went away, remembered for the cooldown."""

    draft: AlertDraft
    opened_at: float
    ended_at: float


@dataclass(frozen=True)
class Content:
    """What a rule reports about an ongoing condition."""

    title: str | None = None
    detail: str | None = None
    zone: str | None = None
    measurements: tuple[Measurement, ...] = ()
    detection: Detection | None = None
    model: ModelRef | None = None


class IncidentBook:
    """Open incidents by key. One key (e.g. ``"co:mq7"`` or ``"loiter:cam0:zone-a"``)
    is one incident at a time; ``raise_`` opens or updates it, ``clear`` ends it.

    - An update is sent when severity changes, or when content changes and at least
      ``update_interval_s`` passed since the last message of that incident.
    - Flap suppression. ``clear`` ends an incident only once its condition has been
      absent for the hold time of its kind (``hold_s``, kinds not named: 0); a raise
      meanwhile keeps it open as if nothing happened. The end names the hold.
      A raise within ``cooldown_s`` of an end continues that incident (same id, state
      ``update``) instead of opening a new one. Ends that were forced (stale, maximum
      duration, ``clear_all``) are never continued.
    - ``expire`` sends the ends whose hold has passed, and ends incidents not raised
      again within ``stale_after_s`` and those open for longer than ``max_duration_s``
      (counted from the first ``new``, continuations included), so nothing stays open
      forever. The node calls it about once a second.

    Thread-safe: every source of a node runs in its own thread and shares one book.
    ``emit`` runs under the book's lock, so alerts leave in the order they happened.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        status: AlertStatus = "Actual",
        update_interval_s: float = 5.0,
        stale_after_s: float | None = 60.0,
        max_duration_s: float | None = 3600.0,
        hold_s: Mapping[str, float] | None = None,
        cooldown_s: float = 0.0,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self._emit = emit
        self._status: AlertStatus = status
        self._update_interval_s = update_interval_s
        self._stale_after_s = stale_after_s
        self._max_duration_s = max_duration_s
        self._hold_s = dict(hold_s or {})
        self._cooldown_s = cooldown_s
        self._new_id = new_id
        self._open: dict[str, _Incident] = {}
        self._ended: dict[str, _Ended] = {}  # within the cooldown of their end
        self._lock = threading.RLock()

    @property
    def stale_after_s(self) -> float | None:
        """How long an incident stays open without a report."""
        return self._stale_after_s

    def is_open(self, key: str) -> bool:
        """Open, its end still held back included: a rule keeps calling ``clear``."""
        return key in self._open

    def open_keys(self) -> list[str]:
        return list(self._open)

    def incident_id(self, key: str) -> str | None:
        found = self._open.get(key)
        return found.draft.incident if found else None

    def hold_for(self, kind: str) -> float:
        return self._hold_s.get(kind, 0.0)

    def raise_(self, key: str, kind: str, severity: Severity, now: float, content: Content = Content()) -> None:
        with self._lock:
            self._raise(key, kind, severity, now, content)

    def _raise(self, key: str, kind: str, severity: Severity, now: float, content: Content) -> None:
        found = self._open.get(key)
        recent = self._ended.get(key) if found is None else None
        if recent is not None and now - recent.ended_at > self._cooldown_s:
            recent = None
        if found is not None:
            incident = found.draft.incident
        else:
            incident = recent.draft.incident if recent is not None else self._new_id()
        draft = AlertDraft(
            kind=kind,
            severity=severity,
            state="new" if found is None and recent is None else "update",
            incident=incident,
            title=content.title,
            detail=content.detail,
            zone=content.zone,
            measurements=content.measurements,
            detection=content.detection,
            model=content.model,
            status=self._status,
        )
        # The book changes only after ``emit`` returned: an alert that could not be stored
        # is raised again by the next report, never skipped.
        if found is None:
            self._emit(draft)
            opened_at = recent.opened_at if recent is not None else now
            self._open[key] = _Incident(draft, opened_at=opened_at, last_seen=now, last_emitted=now)
            self._ended.pop(key, None)
            return
        found.last_seen = now
        found.absent_since = found.end_detail = None  # back within the hold: it never ended
        escalated = severity != found.draft.severity
        changed = replace(draft, state=found.draft.state) != found.draft
        due = now - found.last_emitted >= self._update_interval_s
        if escalated or (changed and due):
            self._emit(draft)
            found.draft = draft
            found.last_emitted = now

    def clear(self, key: str, now: float, detail: str | None = None) -> None:
        """The condition is gone: end the incident once it has stayed gone for its kind's hold."""
        with self._lock:
            found = self._open.get(key)
            if found is None:
                return
            if found.absent_since is None:
                found.absent_since = now
            found.end_detail = detail
            self._end_when_held(key, found, now)

    def _end_when_held(self, key: str, found: _Incident, now: float) -> None:
        assert found.absent_since is not None
        hold = self.hold_for(found.draft.kind)
        if now - found.absent_since < hold:
            return
        detail = found.end_detail or found.draft.detail
        if hold > 0:
            detail = f"{detail} (for {hold:g} s)" if detail else f"condition absent for {hold:g} s"
        end = self._end(key, found, detail)
        if self._cooldown_s > 0:
            self._ended[key] = _Ended(end, found.opened_at, now)

    def _end(self, key: str, found: _Incident, detail: str | None) -> AlertDraft:
        end = replace(found.draft, state="end", detail=detail or found.draft.detail)
        self._emit(end)
        del self._open[key]
        return end

    def expire(self, now: float) -> None:
        with self._lock:
            for key, found in list(self._open.items()):
                if found.absent_since is not None and now - found.absent_since >= self.hold_for(found.draft.kind):
                    self._end_when_held(key, found, now)
                elif self._stale_after_s is not None and now - found.last_seen > self._stale_after_s:
                    self._end(key, found, f"no report for {self._stale_after_s:g} s (stale)")
                elif self._max_duration_s is not None and now - found.opened_at > self._max_duration_s:
                    self._end(key, found, f"open for more than {self._max_duration_s:g} s (maximum)")
            for key, ended in list(self._ended.items()):
                if now - ended.ended_at > self._cooldown_s:
                    del self._ended[key]

    def clear_all(self, now: float, detail: str) -> None:
        """End every incident at once, holds notwithstanding; none is continued afterwards."""
        with self._lock:
            for key, found in list(self._open.items()):
                self._end(key, found, detail)
            self._ended.clear()


@dataclass(frozen=True)
class Level:
    """One alarm level: on at ``on_at``, off again past ``on_at`` ∓ ``hysteresis``."""

    on_at: float
    severity: Severity
    hysteresis: float = 0.0


@dataclass
class _Trigger:
    level: Level
    active: bool = False
    pending_since: float | None = None


@dataclass
class ThresholdRule:
    """A debounced Schmitt trigger per level. A level turns on after the value stays
    past ``on_at`` for ``raise_after_s``, and off after it stays back past
    ``on_at ∓ hysteresis`` for ``clear_after_s``: a value hovering at a threshold
    does not flap."""

    levels: Sequence[Level]
    direction: Literal["above", "below"] = "above"
    raise_after_s: float = 0.0
    clear_after_s: float = 0.0
    _triggers: list[_Trigger] = field(init=False)

    def __post_init__(self) -> None:
        self._triggers = [_Trigger(level) for level in self.levels]

    def _past(self, value: float, limit: float) -> bool:
        return value >= limit if self.direction == "above" else value <= limit

    def observe(self, value: float, now: float) -> Severity | None:
        """Feed one reading; return the severity now in force, or None."""
        sign = 1.0 if self.direction == "above" else -1.0
        for trig in self._triggers:
            if trig.active:
                flipping = not self._past(value, trig.level.on_at - sign * trig.level.hysteresis)
                hold = self.clear_after_s
            else:
                flipping = self._past(value, trig.level.on_at)
                hold = self.raise_after_s
            if not flipping:
                trig.pending_since = None
                continue
            if trig.pending_since is None:
                trig.pending_since = now
            if now - trig.pending_since >= hold:
                trig.active = not trig.active
                trig.pending_since = None
        return self.active_severity()

    def active_severity(self) -> Severity | None:
        active: list[Severity] = [t.level.severity for t in self._triggers if t.active]
        if not active:
            return None
        return max(active, key=severity_rank)

    def clearing(self) -> bool:
        """The severity in force is only waiting out ``clear_after_s``: the last value was
        already back past the clear threshold of every level that holds it."""
        severity = self.active_severity()
        holding = [t for t in self._triggers if t.active and t.level.severity == severity]
        return bool(holding) and all(t.pending_since is not None for t in holding)


@dataclass
class ValueAlarm:
    """A threshold rule on one quantity, tied to one incident key."""

    key: str
    kind: str
    rule: ThresholdRule
    book: IncidentBook
    quantity: str
    unit: str
    _raised: tuple[Severity, Content] | None = field(default=None, init=False)  # what the incident says

    def observe(
        self, value: float, now: float, content: Content | Callable[[], Content] = Content()
    ) -> Severity | None:
        """Feed one reading. ``content`` may be a function that builds it: it is called
        only while the rule is raised, so a camera's count below its threshold builds no
        alert content at all, frame after frame.

        While the level in force only waits out ``clear_after_s``, the incident is raised
        again as it was last raised: a reading past the clear threshold is not what the
        level stands for (a Moderate crowd of 0 people, a smoke alarm with its contact
        open), and the end that follows names it."""
        severity = self.rule.observe(value, now)
        if severity is None:
            self._raised = None
            if self.book.is_open(self.key):
                self.book.clear(self.key, now, detail=f"{self.quantity} back to {value:g} {self.unit}")
            return None
        if self._raised is None or not self.rule.clearing():
            base = content() if callable(content) else content
            reading = Measurement(quantity=self.quantity, value=value, unit=self.unit)
            self._raised = (severity, replace(base, measurements=(reading, *base.measurements)))
        raised_severity, raised = self._raised
        self.book.raise_(self.key, self.kind, raised_severity, now, raised)
        return severity
