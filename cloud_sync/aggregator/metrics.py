"""Prometheus metrics of one aggregator, and the rate-bounded log of rejected input.

With ingest workers (``aggregator run --workers N``, ``workers.py``) each worker process counts
into a registry of its own and sends its ``snapshot`` to the parent, whose ``/metrics`` shows
the sum over workers (``WorkerTotals``), including workers that died since (their last report).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

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
        self.worker_restarts = Counter(
            "s4edge_ingest_worker_restarts",
            "Ingest worker processes started again after they died (aggregator run --workers)",
            registry=self.registry,
        )

    @property
    def ingest_collectors(self) -> tuple[Counter | Histogram, ...]:
        """What ingest itself counts: in a worker process, what it reports to the parent."""
        return (self.received, self.stored, self.duplicates, self.rejected, self.latency, self.store_errors)

    def count_workers(self, totals: WorkerTotals) -> None:
        """Show the workers' sums in place of this process's own ingest counts (it runs no ingest)."""
        for collector in self.ingest_collectors:
            self.registry.unregister(collector)
        self.registry.register(totals)


Sample = tuple[str, dict[str, str], float]
Snapshot = list[tuple[str, str, str, list[Sample]]]  # per family: name, type, help, samples


def snapshot(metrics: IngestMetrics) -> Snapshot:
    """The values of what ingest counts, as JSON can carry them."""
    out: Snapshot = []
    for collector in metrics.ingest_collectors:
        for family in collector.collect():
            out.append(
                (family.name, family.type, family.documentation, [(s.name, s.labels, s.value) for s in family.samples])
            )
    return out


class WorkerTotals:
    """A collector: the ingest counts of worker processes, summed (``_created``: the earliest).

    Each worker's latest snapshot stands for it; when one dies, its last snapshot is kept among
    the retired, so that the sums never go down when the worker starts again from zero."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, Snapshot] = {}
        self._retired: Snapshot = []

    def update(self, worker: int, values: Snapshot) -> None:
        with self._lock:
            self._live[worker] = values

    def retire(self, worker: int) -> None:
        with self._lock:
            gone = self._live.pop(worker, None)
            if gone is not None:
                self._retired = _merged([self._retired, gone])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshots = [self._retired, *self._live.values()]
        for name, kind, documentation, samples in _merged(snapshots):
            family = Metric(name, documentation, kind)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, value)
            yield family


def _merged(snapshots: Iterable[Snapshot]) -> Snapshot:
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for values in snapshots:
        for name, kind, documentation, samples in values:
            _, _, sums = families.setdefault(name, (kind, documentation, {}))
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in sums:
                    sums[key] = value
                elif sample_name.endswith("_created"):
                    sums[key] = min(sums[key], value)
                else:
                    sums[key] += value
    return [
        (name, kind, documentation, [(sample, dict(labels), value) for (sample, labels), value in sums.items()])
        for name, (kind, documentation, sums) in families.items()
    ]


def snapshot_from_json(data: Any) -> Snapshot:
    """A snapshot as it came over the pipe (lists for tuples)."""
    return [
        (
            str(name),
            str(kind),
            str(doc),
            [(str(s[0]), {str(k): str(v) for k, v in s[1].items()}, float(s[2])) for s in samples],
        )
        for name, kind, doc, samples in data
    ]


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
