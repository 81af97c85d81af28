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
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from s4edge.cloud_sync.ng112.api import build_router
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config

if TYPE_CHECKING:
    from s4edge.cloud_sync.aggregator.app import Aggregator


def attach(aggregator: Aggregator, config: Ng112Config, tls_context: ssl.SSLContext | None = None) -> Forwarder:
    aggregator.store.create_all()  # idempotent; the forwards table sits on the store's metadata
    forwarder = Forwarder(
        aggregator.store.engine,
        config,
        tls_context=tls_context,
        on_change=lambda row: aggregator.events.publish("ng112", row),
    )
    aggregator.include_router(build_router(forwarder))
    aggregator.forward_jobs(config.job_kinds, on_jobs=forwarder.wake)
    forwarder.start()
    return forwarder
