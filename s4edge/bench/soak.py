"""``s4edge bench soak``: node → mosquitto → aggregator under kill -9, counting every alert.

Three real processes: mosquitto (persistence on, as the fleet's generated config sets
it), ``s4edge aggregator run`` (SQLite, its default ingest workers) and a node, which is this
module run as a script: a real ``Node`` (outbox on disk, uplink, forwarder, receipts)
publishing alerts at a fixed rate. Each is killed with SIGKILL at evenly spread times
and started again after ``--downtime`` seconds.

"Created" is what the node durably put in its outbox: a trigger in the outbox file
records each alert's id and time in the insert's own transaction, so it counts exactly
the puts that committed, a node killed mid-put included. "Lost" is created and not in
the aggregator's store at the end; "duplicated" is an id with more than one row.

The backlog of a fault has drained, in the store, at the first instant after the
restart at which every alert created so far is stored (from creation times and the
store's ``received_at``); in the outbox, at the first poll after the restart at which
it holds no alert created before the restart (receipts for all of them came back).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import typer
from sqlalchemy import func, select

from s4edge.cloud_sync.aggregator.store import alerts, make_engine
from s4edge.cloud_sync.outbox import Outbox
from s4edge.testing import Mosquitto, eventually

TARGETS = ("broker", "aggregator", "node")
POLL_S = 0.5
SITE, NODE = "soak", "soak-node"
DUPLICATES = "s4edge_messages_duplicate_total"
# In the environment of every process the soak starts (and their children, the
# aggregator's writer process too), naming the run's folder: a leftover can be found.
RUN_MARK = "S4EDGE_SOAK_RUN"
# Written into the node's outbox before it starts; fires inside the put's own transaction.
_CREATED_LEDGER = """
CREATE TABLE IF NOT EXISTS soak_created (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS soak_created_on_put AFTER INSERT ON outbox WHEN NEW.kind = 'alert'
BEGIN
    INSERT OR IGNORE INTO soak_created VALUES (NEW.receipt_id, (julianday('now') - 2440587.5) * 86400.0);
END;
"""


@dataclass
class Fault:
    target: str
    killed_at: float
    restarted_at: float = 0.0
    outbox_drained_at: float | None = None


def fault_plan(duration: float, counts: dict[str, int]) -> list[tuple[float, str]]:
    """(seconds after the start, target), evenly spread, the targets taken in turn."""
    order: list[str] = []
    left = dict(counts)
    while any(left.values()):
        for target in TARGETS:
            if left.get(target, 0) > 0:
                order.append(target)
                left[target] -= 1
    return [(duration * (i + 1) / (len(order) + 1), target) for i, target in enumerate(order)]


class Soak:
    """The three processes, their faults, and the polls made meanwhile."""

    def __init__(self, root: Path, rate: float) -> None:
        self.root, self.rate = root, rate
        self.broker = Mosquitto(root / "broker")
        self.store_url = f"sqlite:///{root / 'aggregator.db'}"
        self.outbox_path = root / "node" / "outbox.db"
        self.aggregator: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.aggregator_url = ""
        self.redeliveries: list[float] = []  # per aggregator run: its last scraped duplicate count
        self.unexpected_exits: list[tuple[str, int, float]] = []  # (process, exit status, when)
        self.faults: list[Fault] = []
        self.began = 0.0  # UNIX time the node was first started
        self.until = 0.0  # UNIX time the node stops creating alerts
        self._ledger: sqlite3.Connection | None = None
        self.env = {**os.environ, RUN_MARK: str(root)}

    # -- processes -------------------------------------------------------------------

    def start_aggregator(self) -> None:
        log = self.root / "aggregator.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = [
            sys.executable, "-m", "s4edge", "aggregator", "run", "--broker", self.broker.url, "--db", self.store_url,
            "--http", "127.0.0.1:0", "--client-id", "soak-aggregator",
        ]  # fmt: skip
        with log.open("ab") as err:
            self.aggregator = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, env=self.env, start_new_session=True
            )

        def url() -> str:
            if self.aggregator is not None and self.aggregator.poll() is not None:
                raise RuntimeError(f"the aggregator exited: {log.read_text()[-2000:]}")
            with log.open("rb") as text:
                text.seek(offset)
                for line in text.read().decode(errors="replace").splitlines():
                    if line.startswith("aggregator: http://"):
                        return line.split()[1]
            return ""

        self.aggregator_url = eventually(url, 60, "the aggregator's start", every=0.05)
        self.redeliveries.append(0.0)

    def start_node(self) -> None:
        argv = [sys.executable, "-m", __name__, self.broker.url, str(self.outbox_path), str(self.rate), str(self.until)]
        with (self.root / "node.log").open("ab") as err:
            self.node = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, env=self.env, start_new_session=True
            )

    def prepare_outbox(self) -> None:
        Outbox(self.outbox_path).close()
        with contextlib.closing(sqlite3.connect(self.outbox_path)) as db:
            db.executescript(_CREATED_LEDGER)
        self._ledger = sqlite3.connect(self.outbox_path, timeout=30)

    def kill(self, target: str) -> None:
        if target == "broker":
            self.broker.kill()
            return
        proc = self.aggregator if target == "aggregator" else self.node
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the aggregator's workers too
            proc.wait(10)

    def restart(self, target: str) -> None:
        if target == "broker":
            self.broker.start()
        elif target == "aggregator":
            self.start_aggregator()
        else:
            self.start_node()

    def stop(self) -> None:
        """SIGTERM each, then SIGKILL its whole process group: nothing is left behind."""
        for proc in (self.node, self.aggregator):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.broker.stop()
        if self._ledger is not None:
            self._ledger.close()

    # -- polls -----------------------------------------------------------------------

    def _scrape(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            for line in httpx.get(f"{self.aggregator_url}/metrics", timeout=2).text.splitlines():
                if line.startswith(DUPLICATES + " "):
                    self.redeliveries[-1] = float(line.split()[-1])

    def outbox_rows_created_before(self, moment: float) -> int:
        assert self._ledger is not None
        (count,) = self._ledger.execute(
            "SELECT COUNT(*) FROM outbox JOIN soak_created ON soak_created.id = outbox.receipt_id"
            " WHERE soak_created.at <= ?",
            (moment,),
        ).fetchone()
        return int(count)

    def poll(self) -> None:
        for name, proc in (("aggregator", self.aggregator), ("node", self.node)):
            if proc is not None and proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                self.unexpected_exits.append((name, proc.returncode, time.time()))
                if name == "aggregator":
                    self.aggregator = None
                else:
                    self.node = None
        for fault in self.faults:
            waiting = fault.restarted_at and fault.outbox_drained_at is None
            if waiting and self.outbox_rows_created_before(fault.restarted_at) == 0:
                fault.outbox_drained_at = time.time()
        if self.aggregator is not None:
            self._scrape()

    def wait(self, deadline: float, done: Callable[[], bool] = lambda: False) -> bool:
        """Poll until ``done`` or the (UNIX) deadline; True if ``done``."""
        while time.time() < deadline:
            self.poll()
            if done():
                return True
            time.sleep(min(POLL_S, max(0.0, deadline - time.time())))
        return done()

    # -- what happened ---------------------------------------------------------------

    def created(self) -> dict[str, float]:
        assert self._ledger is not None
        return dict(self._ledger.execute("SELECT id, at FROM soak_created").fetchall())

    def stored(self) -> list[tuple[str, int, float]]:
        engine = make_engine(self.store_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(alerts.c.id, alerts.c.seq, alerts.c.received_at)).all()
        finally:
            engine.dispose()
        return [(r.id, r.seq, r.received_at.replace(tzinfo=r.received_at.tzinfo or UTC).timestamp()) for r in rows]

    def all_delivered(self) -> bool:
        engine = make_engine(self.store_url)
        try:
            with engine.connect() as conn:
                count = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
        finally:
            engine.dispose()
        return count >= len(self.created()) and self.outbox_rows_created_before(float("inf")) == 0


def store_drained(created: dict[str, float], received: dict[str, float], since: float, before: float) -> float | None:
    """The first instant in [since, before) at which every alert created by then is stored."""
    by_creation = sorted((at, received.get(alert_id, float("inf"))) for alert_id, at in created.items())
    times = [at for at, _ in by_creation]
    latest: list[float] = []  # latest[i]: when the last of the first i+1 alerts created was stored
    for _, stored_at in by_creation:
        latest.append(max(stored_at, latest[-1]) if latest else stored_at)
    for moment in sorted({since, *(r for r in received.values() if since <= r < before)}):
        made = bisect.bisect_right(times, moment)
        if made == 0 or latest[made - 1] <= moment:
            return moment
    return None


def run_soak(
    duration: float, rate: float, counts: dict[str, int], downtime: float, drain_timeout: float, root: Path
) -> dict[str, Any]:
    plan = fault_plan(duration, counts)
    gaps = [b - a for (a, _), (b, _) in zip([(0.0, ""), *plan], [*plan, (duration, "")], strict=True)]
    if min(gaps) <= downtime:
        raise typer.BadParameter(f"{len(plan)} faults in {duration:g} s leave less than --downtime between them")
    soak = Soak(root, rate)
    try:
        soak.broker.start()
        soak.start_aggregator()
        soak.prepare_outbox()
        soak.began = time.time()
        soak.until = soak.began + duration
        soak.start_node()
        for at, target in plan:
            soak.wait(soak.began + at)
            fault = Fault(target, time.time())
            soak.faults.append(fault)
            soak.kill(target)
            soak.wait(fault.killed_at + downtime)
            fault.restarted_at = time.time()
            soak.restart(target)
        soak.wait(soak.until)
        drained = soak.wait(soak.until + drain_timeout, soak.all_delivered)
        final_drain = time.time() - soak.until
        soak.poll()
        created, stored = soak.created(), soak.stored()
        left_in_outbox = soak.outbox_rows_created_before(float("inf"))
    finally:
        soak.stop()
    return {
        "benchmark": "soak",
        "duration_s": duration,
        "rate_per_s": rate,
        "downtime_s": downtime,
        "cpu_cores": os.cpu_count(),
        "alerts": {**counted(created, stored), "left_in_outbox": left_in_outbox},
        **timings(soak, created, stored),
        "final_drain_s": round(final_drain, 2),
        "drained": drained,
        "unexpected_exits": [
            {"process": name, "status": status, "at": round(at - soak.began, 2)}
            for name, status, at in soak.unexpected_exits
        ],
        "redeliveries_dropped_by_store_at_least": int(sum(soak.redeliveries)),
        "times": "seconds after the node started; a fault's drain is counted from its kill",
    }


def counted(created: dict[str, float], stored: list[tuple[str, int, float]]) -> dict[str, Any]:
    ids = [alert_id for alert_id, _, _ in stored]
    seqs = [seq for _, seq, _ in stored]
    lost = sorted(set(created) - set(ids), key=created.__getitem__)
    return {
        "created": len(created),
        "stored": len(set(ids) & set(created)),
        "lost": len(lost),
        "duplicated": len(ids) - len(set(ids)),
        "stored_not_created": len(set(ids) - set(created)),
        "seq_repeated": len(seqs) - len(set(seqs)),  # a seq must never repeat, even across restarts
        "lost_ids": lost[:20],
    }


def timings(soak: Soak, created: dict[str, float], stored: list[tuple[str, int, float]]) -> dict[str, Any]:
    def since_start(moment: float | None) -> float | None:
        return None if moment is None else round(moment - soak.began, 2)

    received = {alert_id: at for alert_id, _, at in stored}
    latencies = sorted((received[i] - at) * 1000 for i, at in created.items() if i in received)
    faults = []
    for k, fault in enumerate(soak.faults):
        # a backlog still there at the next fault has not drained from this one
        before = soak.faults[k + 1].killed_at if k + 1 < len(soak.faults) else float("inf")
        in_store = store_drained(created, received, fault.restarted_at, before)
        in_outbox = fault.outbox_drained_at if (fault.outbox_drained_at or before) < before else None
        faults.append(
            {
                "target": fault.target,
                "killed_at": since_start(fault.killed_at),
                "restarted_at": since_start(fault.restarted_at),
                "store_drained_after_s": None if in_store is None else round(in_store - fault.killed_at, 2),
                "outbox_drained_after_s": None if in_outbox is None else round(in_outbox - fault.killed_at, 2),
            }
        )
    last = faults[-1] if faults else {}
    return {
        "latency_ms": {
            "median": round(statistics.median(latencies), 1) if latencies else None,
            "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "faults": faults,
        "drain_after_last_fault_s": {
            "store": last.get("store_drained_after_s"),
            "outbox": last.get("outbox_drained_after_s"),
        },
    }


def drive_node(broker_url: str, outbox: str, rate: float, until: float) -> None:
    """The soak's node process: a real ``Node`` putting one alert every 1/rate s until
    ``until`` (UNIX time), then only forwarding, until SIGTERM."""
    from s4edge.cloud_sync.messages import new_id
    from s4edge.edge.alerts import AlertDraft
    from s4edge.edge.app import Node
    from s4edge.edge.config import parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = parse_config(
        {
            "node_id": NODE,
            "site": SITE,
            "location": {"lat": 52.52, "lon": 13.405},
            "mqtt": {"url": broker_url},
            "outbox": {"path": outbox},
            "status": "Exercise",
            "sources": [],
        }
    )
    node = Node(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node.start()
    try:
        put, started = 0, time.monotonic()
        while not stop.is_set() and time.time() < until:
            node.publish_alert(AlertDraft(kind="smoke", severity="Minor", state="new", incident=new_id()))
            put += 1
            stop.wait(max(0.0, started + put / rate - time.monotonic()))
        stop.wait()
    finally:
        node.close()


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("soak")
    def soak(
        duration: float = typer.Option(600.0, help="Seconds the node creates alerts"),
        rate: float = typer.Option(10.0, help="Alerts per second"),
        broker_kills: int = typer.Option(3, help="SIGKILLs of mosquitto"),
        aggregator_kills: int = typer.Option(2, help="SIGKILLs of the aggregator (and its writer process)"),
        node_kills: int = typer.Option(1, help="SIGKILLs of the node"),
        downtime: float = typer.Option(5.0, help="Seconds a killed process stays down"),
        drain_timeout: float = typer.Option(300.0, help="Most seconds to wait for the backlog after the last alert"),
        workdir: Path | None = typer.Option(None, help="Keep the logs and databases here (default: a temp dir)"),
    ) -> None:
        """Alerts created, stored, lost and duplicated under kill -9; backlog drain times."""
        counts = {"broker": broker_kills, "aggregator": aggregator_kills, "node": node_kills}

        def on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # through the finally that stops the processes

        before = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            with tempfile.TemporaryDirectory(prefix="s4edge-soak-") as tmp:
                root = workdir or Path(tmp)
                root.mkdir(parents=True, exist_ok=True)
                typer.echo(json.dumps(run_soak(duration, rate, counts, downtime, drain_timeout, root), indent=2))
        finally:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    drive_node(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
