"""A node imports what it runs and nothing more: every package is resident memory
(``s4edge bench vision``, memory, lists each one's share)."""

from __future__ import annotations

import json
import subprocess
import sys

# what a node never uses: the aggregator's and the researcher's stacks, and cryptography
# until a command or a commands.verify_key needs a signature checked
NOT_AT_START = (
    "sklearn",
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "psycopg",
    "amqtt",
    "pycocotools",
    "lxml",
    "cryptography",
)


def test_a_vision_and_sensors_node_starts_without_the_stacks_it_does_not_use() -> None:
    code = (
        "import json, sys\n"
        "import s4edge.edge.app, s4edge.edge.vision.source, s4edge.edge.sensing.source, s4edge.edge.scenario\n"
        "import s4edge.edge.vision.detector, s4edge.edge.vision.catalogue\n"
        f"print(json.dumps([m for m in {NOT_AT_START!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
