"""Prometheus metrics of one aggregator, and the rate-bounded log of rejected input."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("s4edge.aggregator")


class IngestMetrics:
    """One registry per aggregator, so that replicas in one process (tests, demo) don't collide."""

    def __init__(self, nodes_online: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "s4edge_messages_received", "Messages received from the broker", ["type"], registry=self.registry
        )
        self.stored = Counter(
            "s4edge_messages_stored", "Messages committed to the store", ["type"], registry=self.registry
        )
        self.duplicates = Counter(
            "s4edge_messages_duplicate", "Alerts already stored (same id), dropped", registry=self.registry
        )
        self.rejected = Counter(
            "s4edge_messages_rejected", "Messages refused, by reason", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "s4edge_ingest_latency_seconds",
            "From receipt to commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "s4edge_store_errors", "Batch commits that failed and were retried", registry=self.registry
        )
        self.auth_failures = Counter(
            "s4edge_broker_auth_failures",
            "Connections the broker refused, by reason (from its log, with --broker-log)",
            ["reason"],
            registry=self.registry,
        )
        self.online = Gauge("s4edge_nodes_online", "Nodes whose retained status says online", registry=self.registry)
        if nodes_online is not None:
            self.online.set_function(nodes_online)


@dataclass
class RejectionLog:
    """Logs the first rejection of each reason per window, then how many it held back."""

    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _opened: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str, topic: str, detail: str) -> bool:
        """Returns True when this one was logged."""
        now = self.clock()
        opened = self._opened.get(reason)
        if opened is not None and now - opened < self.window_s:
            self._held[reason] = self._held.get(reason, 0) + 1
            return False
        held = self._held.pop(reason, 0)
        self._opened[reason] = now
        suffix = f" ({held} more like it in the last {self.window_s:.0f} s)" if held else ""
        log.warning("rejected message on %s: %s: %s%s", topic[:200], reason, detail[:300], suffix)
        return True
