from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from s4edge.testing import Mosquitto

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Models come from the shared mirror (docs/architecture.md, "Models") into a cache private to this run.
if (SHARED / "models").is_dir():
    os.environ.setdefault("S4EDGE_MODEL_MIRROR", str(SHARED / "models"))
os.environ.setdefault("S4EDGE_MODEL_CACHE", tempfile.mkdtemp(prefix="s4edge-models-"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free port, that the test may kill and restart."""
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def shared() -> Path:
    """../shared beside the repo (models, images, NIR data, CAP schema)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the reference models and data live there")
    return SHARED
