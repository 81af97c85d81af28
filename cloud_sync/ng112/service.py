"""Plug NG112 forwarding into a running aggregator, without the aggregator knowing about it.

    aggregator = Aggregator(config)
    forwarder = attach(aggregator, load_config("ng112.yaml"))   # before aggregator.start()
    aggregator.start()
    ...
    forwarder.stop(); aggregator.stop()

``attach`` mounts the /ng112 router on the aggregator's FastAPI app, has ingest commit a
forward job with every alert of a kind the config forwards or correlates and wake the
forwarder after each commit that wrote one, publishes every change of a forward as an
``ng112`` live event for the dashboard, and starts the forwarder, which drains those jobs
from the store and sends.

Where the aggregator writes from a child process (``aggregator run``'s default), the
forwarder runs in one too (``process.py``), so that its work does not slow ingest down;
otherwise (the embedded aggregator of the demo and tests, an in-memory store, a TLS
context handed in) it runs in a thread of the aggregator's process.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from s4edge.cloud_sync.aggregator.writer import StoreSpec
from s4edge.cloud_sync.ng112.api import build_router
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.process import ForwarderProcess

if TYPE_CHECKING:
    from s4edge.cloud_sync.aggregator.app import Aggregator


def attach(
    aggregator: Aggregator, config: Ng112Config, tls_context: ssl.SSLContext | None = None
) -> Forwarder | ForwarderProcess:
    aggregator.store.create_all()  # idempotent; the forwards table sits on the store's metadata
    spec = StoreSpec(aggregator.config.db_url, aggregator.config.db_schema, aggregator.config.sqlite_sync)

    def announce(row: dict[str, Any]) -> None:
        aggregator.events.publish("ng112", row)

    forwarder: Forwarder | ForwarderProcess
    if aggregator.config.writer == "process" and spec.shareable and tls_context is None:
        forwarder = ForwarderProcess(spec, aggregator.store.engine, config, on_change=announce)
    else:
        forwarder = Forwarder(aggregator.store.engine, config, tls_context=tls_context, on_change=announce)
    aggregator.include_router(build_router(forwarder))
    aggregator.forward_jobs(config.job_kinds, on_jobs=forwarder.wake)
    forwarder.start()
    return forwarder
