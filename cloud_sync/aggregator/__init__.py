"""The centre side: ingest, store, HTTP API, live stream and dashboard (``Aggregator`` in ``app``)."""
