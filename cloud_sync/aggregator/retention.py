"""What the store keeps, and for how long, pruned every ``every_s`` in a thread of its own.

- **Trends:** the 1-minute buckets of ``telemetry_series`` (trends.py), for
  ``--telemetry-retention-days`` (7).
- **Incidents:** only when the operator sets ``--incident-retention-days``; kept for good
  otherwise, as how long emergency records must be kept is the operator's legal duty, not
  ours to choose. An incident is deleted once it has ended (incidents.ended_flag) and its last
  alert arrived before the cut-off: its alerts, its acknowledgement, its owner and, where
  NG112 forwarding put them on the store, its NG112 calls. An incident an alert still waits to
  be forwarded for, or with a call still in flight, is kept until it is done.

An alert that arrives while its incident is pruned (a re-trigger reopening it) is never
deleted with it: only alerts received before the cut-off go, and the incident's other rows
only once no alert of it is left. A failure (a store outage, a read-only file) is logged and
tried again at the next turn.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, delete, exists, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from s4edge.cloud_sync.aggregator.incidents import ended_flag
from s4edge.cloud_sync.aggregator.store import (
    Clock,
    alerts,
    forward_jobs,
    incident_acks,
    incident_owners,
)
from s4edge.cloud_sync.aggregator.trends import prune as prune_trends

log = logging.getLogger("s4edge.aggregator")

PRUNE_EVERY_S = 600.0
INCIDENTS_PER_BATCH = 500  # deleted in one transaction: short, so ingest's commits are not held back
BATCHES_PER_TURN = 20  # a backlog (retention just set on a year of alerts) goes over several turns
# NG112 call states still in flight (ng112/records.py OPEN_STATES; the aggregator never imports NG112)
CALLS_IN_FLIGHT = ("awaiting_confirm", "pending", "sending", "retrying")


# NG112's tables (ng112/records.py), as far as pruning reads them: a store that forwarded once
# holds them even when the aggregator runs without --ng112, which never imports records.py
_NG112 = MetaData()
NG112_TABLES = (
    Table("forwards", _NG112, Column("incident", String(64)), Column("state", String(20))),
    Table("ng112_incidents", _NG112, Column("incident", String(64))),
)


def _ng112_tables(conn: Connection) -> dict[str, Table]:
    """NG112's tables that the store holds, by name."""
    present = set(inspect(conn).get_table_names(schema=conn.schema_for_object(alerts)))
    return {table.name: table for table in NG112_TABLES if table.name in present}


def ended_before(engine: Engine, before: datetime, limit: int, ng112: dict[str, Table]) -> list[str]:
    """Up to ``limit`` ended incidents whose last alert arrived before ``before``, but for those
    an alert still waits to be forwarded for or with an NG112 call in flight. One scan of
    ``alerts`` (``received_at`` is in no index: a turn reads the table once, not per batch)."""
    with engine.connect() as conn:
        waiting = select(alerts.c.incident).join(forward_jobs, forward_jobs.c.alert_id == alerts.c.id)
        candidates = select(alerts.c.incident).where(alerts.c.incident.not_in(waiting))
        if (forwards := ng112.get("forwards")) is not None:
            calling = select(forwards.c.incident).where(forwards.c.state.in_(CALLS_IN_FLIGHT))
            candidates = candidates.where(alerts.c.incident.not_in(calling))
        candidates = (
            candidates.group_by(alerts.c.incident)
            .having(ended_flag() == 1)
            .having(func.max(alerts.c.received_at) < before)
            .limit(limit)
        )
        return list(conn.execute(candidates).scalars())


def delete_incidents(engine: Engine, ids: list[str], before: datetime, ng112: dict[str, Table]) -> None:
    """Delete the alerts of ``ids`` received before ``before``, then the incidents' other rows
    (``ng112``'s too) where no alert of theirs is left, in one transaction."""
    with engine.begin() as conn:
        conn.execute(delete(alerts).where(alerts.c.incident.in_(ids), alerts.c.received_at < before))
        for table in (incident_acks, incident_owners, *ng112.values()):
            left = exists().where(alerts.c.incident == table.c.incident)
            conn.execute(delete(table).where(table.c.incident.in_(ids), ~left))


class Retention:
    """Prunes the trends, and the ended incidents when ``incidents_s`` is set, every ``every_s``."""

    def __init__(
        self,
        engine: Engine,
        retention_s: float,
        clock: Clock,
        every_s: float = PRUNE_EVERY_S,
        incidents_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.retention_s = retention_s
        self.incidents_s = incidents_s
        self.clock = clock
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prune_once(self) -> int:
        """One turn; the number of trend buckets deleted."""
        removed = prune_trends(self.engine, self.clock() - timedelta(seconds=self.retention_s))
        if self.engine.dialect.name == "sqlite":
            # a WAL whose checkpoints readers kept back never shrinks by itself: empty it (SQLite
            # waits for the readers of the moment, up to the busy timeout) and cut it back
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def prune_incidents_once(self) -> int:
        """One turn's batches of ended incidents; the number deleted (0 when kept for good)."""
        if self.incidents_s is None:
            return 0
        before = self.clock() - timedelta(seconds=self.incidents_s)
        with self.engine.connect() as conn:  # once a turn: the store's catalogue, not per batch
            ng112 = _ng112_tables(conn)
        ids = ended_before(self.engine, before, INCIDENTS_PER_BATCH * BATCHES_PER_TURN, ng112)
        done = 0
        while done < len(ids) and not self._stop.is_set():
            delete_incidents(self.engine, ids[done : done + INCIDENTS_PER_BATCH], before, ng112)
            done = min(len(ids), done + INCIDENTS_PER_BATCH)
        return done

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aggregator-retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                incidents = self.prune_incidents_once()
                if incidents:
                    days = (self.incidents_s or 0) / 86400
                    log.info("retention: deleted %d ended incidents older than %g days", incidents, days)
                removed = self.prune_once()
                if removed:
                    log.info("trends: pruned %d buckets older than %.0f days", removed, self.retention_s / 86400)
            except SQLAlchemyError as exc:
                log.warning("retention: pruning failed (%s); trying again in %.0f s", type(exc).__name__, self.every_s)
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
