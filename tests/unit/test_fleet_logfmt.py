"""JSON-lines logging shared by the node and the aggregator."""

from __future__ import annotations

import io
import json
import logging

from s4edge.cloud_sync.logfmt import json_handler


def test_each_record_is_one_json_line_with_extras_and_exceptions() -> None:
    stream = io.StringIO()
    log = logging.getLogger("s4edge.test.logfmt")
    log.propagate = False
    log.addHandler(json_handler(stream))
    log.setLevel(logging.INFO)
    try:
        log.info("alert %s queued", "inc-1", extra={"node_id": "node-a", "depth": 3})
        try:
            raise ValueError("bad payload\nsecond line")
        except ValueError:
            log.exception("rejected")
    finally:
        log.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "alert inc-1 queued" and first["level"] == "INFO"
    assert first["node_id"] == "node-a" and first["depth"] == 3 and first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: bad payload" in second["exc"]
    assert "args" not in first and "exc_info" not in first
