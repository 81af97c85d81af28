"""``python -m cloud_sync.aggregator run …``: the aggregator without the rest of the CLI's imports."""

from s4edge.cloud_sync.aggregator.cli import aggregator_app

aggregator_app()
