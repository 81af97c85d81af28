"""Cross-sensor correlation: declarative rules turn co-occurring alerts at a site into
one escalated incident (e.g. gas + flame within 120 s → Extreme).

Time is the alerts' own ``ts``, so the outcome does not depend on arrival jitter.

Replicas sharing the fleet through ``$share`` each see only some of a site's alerts, so
the forwarder passes a ``recall`` that reads the site's recent alerts from the shared
store: whichever replica commits the second part last sees both and escalates. The
escalated alert's id derives from its parts, so two replicas that both escalate the same
parts create one forward (its alert id is the de-dup key). What stays per process is
the memory of an escalation already open: after its window another replica may open a
second escalated incident for the same ongoing event (docs/emqx.md §4).

An escalation ends once every incident it was made of has ended, so that the PSAP gets its
Cancel: its end's id derives from the escalation's, so two replicas that both end it make
one forward. Which incidents it was made of is known to the process that opened it; an end
that another replica ingests is not seen here (with replicas, a part's end goes to one of them).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from s4edge.cloud_sync.messages import Alert, Measurement
from s4edge.cloud_sync.ng112.policy import CorrelationRule, is_pre_alarm


@dataclass
class _Open:
    incident: str
    last: datetime


@dataclass
class _Escalation:
    alert: Alert  # as opened
    parts: frozenset[str]  # the incidents it was made of
    ended: set[str]
    key: tuple[str, str, str | None]


MAX_OPEN = timedelta(days=1)  # an escalation whose parts have not all ended by then is forgotten
CLOSED_KEPT = 256  # escalations lately ended, kept to be ended again if their end was not recorded

# The site's stored alerts with ``ts`` between the two moments (other replicas' included).
Recall = Callable[[str, datetime, datetime], list[Alert]]


class Correlator:
    def __init__(self, rules: list[CorrelationRule], recall: Recall | None = None) -> None:
        self.rules = rules
        self.recall = recall
        self._horizon = timedelta(seconds=max((r.within_s for r in rules), default=0.0))
        self._recent: dict[str, deque[Alert]] = {}
        self._open: dict[tuple[str, str, str | None], _Open] = {}
        self._escalations: dict[str, _Escalation] = {}  # by incident, until all its parts ended
        self._closed: dict[str, _Escalation] = {}  # lately ended: back in _escalations if the end was not recorded
        self._ended: deque[str] = deque(maxlen=1024)  # incidents that ended lately, for one opened after

    def observe(self, alert: Alert) -> list[Alert]:
        """Escalated alerts that ``alert`` completes (at most one per rule)."""
        if alert.state == "end" and alert.kind != "escalation":
            self._ended.append(alert.incident)
            self._expire(alert.ts)
            return self._end(alert)
        # a pre-alarm stays local (policy.is_pre_alarm): it may not become part of a call either
        if alert.state == "end" or alert.kind == "escalation" or is_pre_alarm(alert) or not self.rules:
            return []
        recent = self._recent.setdefault(alert.site, deque())
        known = {seen.id for seen in recent}
        if alert.id not in known:
            recent.append(alert)
            known.add(alert.id)
        if self.recall is not None:
            recalled = self.recall(alert.site, alert.ts - self._horizon, alert.ts + self._horizon)
            recent.extend(
                a
                for a in recalled
                if a.id not in known and a.state != "end" and a.kind != "escalation" and not is_pre_alarm(a)
            )
            # In time order (ties by id), so every replica picks the same first alert of a kind.
            self._recent[alert.site] = recent = deque(sorted(recent, key=lambda a: (a.ts, a.id)))
        while recent and alert.ts - recent[0].ts > self._horizon:
            recent.popleft()
        found = [found for rule in self.rules if (found := self._match(rule, alert, recent)) is not None]
        return [*found, *(end for opened in found for end in self._end_if_over(self._escalations[opened.incident]))]

    def _end(self, part: Alert) -> list[Alert]:
        """The ends of the escalations whose last open part ``part`` ends."""
        ends = []
        for escalation in [e for e in self._escalations.values() if part.incident in e.parts]:
            escalation.ended.add(part.incident)
            ends += self._end_if_over(escalation, part)
        return ends

    def _end_if_over(self, escalation: _Escalation, last: Alert | None = None) -> list[Alert]:
        if not escalation.parts <= escalation.ended:
            return []
        opened = escalation.alert
        del self._escalations[opened.incident]
        self._closed[opened.incident] = escalation
        while len(self._closed) > CLOSED_KEPT:
            del self._closed[next(iter(self._closed))]
        if (held := self._open.get(escalation.key)) is not None and held.incident == opened.incident:
            del self._open[escalation.key]  # the next co-occurrence is a new escalated incident
        when = max(opened.ts, last.ts) if last is not None else opened.ts
        end = {
            "id": f"{opened.id}-end",  # the same on every replica that ends it
            "ts": when,
            "state": "end",
            "detail": "Every correlated incident has ended: " + ", ".join(sorted(escalation.parts))[:900],
        }
        return [Alert.model_validate(opened.model_dump() | end)]

    def forget(self, escalations: list[Alert]) -> None:
        """Escalations that were never recorded: the next look at their parts raises them again,
        and an end never recorded comes again when its parts' ends are taken again."""
        lost = {escalation.incident for escalation in escalations if escalation.state != "end"}
        self._open = {key: opened for key, opened in self._open.items() if opened.incident not in lost}
        for incident in lost:
            self._escalations.pop(incident, None)
        for end in (escalation for escalation in escalations if escalation.state == "end"):
            if (closed := self._closed.pop(end.incident, None)) is not None:
                closed.ended.clear()  # its parts' ends, taken again, end it again
                self._escalations[end.incident] = closed

    def _expire(self, now: datetime) -> None:
        """An escalation open past ``MAX_OPEN`` is forgotten: a part's end went to another
        replica, or never came, and it must not be kept for ever."""
        for incident in [i for i, e in self._escalations.items() if now - e.alert.ts > MAX_OPEN]:
            del self._escalations[incident]

    def _match(self, rule: CorrelationRule, alert: Alert, recent: deque[Alert]) -> Alert | None:
        if alert.kind not in rule.kinds or (rule.sites is not None and alert.site not in rule.sites):
            return None
        zone = alert.location.zone if rule.same_zone else None
        window = timedelta(seconds=rule.within_s)
        # A drill never combines with a real alert: the escalation keeps the status of its parts.
        parts = [
            seen
            for seen in recent
            if abs(alert.ts - seen.ts) <= window
            and seen.status == alert.status
            and (not rule.same_zone or seen.location.zone == zone)
        ]
        first_of_kind: dict[str, Alert] = {}
        for seen in parts:
            if seen.kind in rule.kinds:
                first_of_kind.setdefault(seen.kind, seen)
        if set(first_of_kind) != set(rule.kinds):
            return None
        key = (rule.name, alert.site, zone)
        opened = self._open.get(key)
        if opened is not None and alert.ts - opened.last <= window:
            opened.last = alert.ts  # the same escalated incident goes on
            return None
        contributing = sorted(first_of_kind.values(), key=lambda a: a.ts)
        digest = hashlib.sha256("|".join([rule.name, alert.site, *(a.id for a in contributing)]).encode())
        incident = f"esc-{rule.name}-{digest.hexdigest()[:16]}"[:64]
        # The same parts give the same id on every replica: one forward however many escalate.
        escalation_id = f"esc-{digest.hexdigest()[:40]}"
        self._open[key] = _Open(incident, alert.ts)
        measurements: list[Measurement] = [m for a in contributing for m in a.measurements][:32]
        escalation = Alert(
            id=escalation_id,
            node_id=alert.node_id,
            site=alert.site,
            seq=alert.seq,
            ts=alert.ts,
            kind="escalation",
            severity=rule.severity,
            state="new",
            incident=incident,
            status=alert.status,
            location=alert.location,
            title=f"{' + '.join(rule.kinds)} within {rule.within_s:g} s ({rule.name})"[:128],
            detail="Correlated incidents: "
            + ", ".join(f"{a.kind} {a.incident} from {a.node_id}" for a in contributing)[:1000],
            measurements=measurements,
        )
        made_of = frozenset(a.incident for a in contributing)
        self._escalations[incident] = _Escalation(escalation, made_of, set(made_of & set(self._ended)), key)
        return escalation
