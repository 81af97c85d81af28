"""Files the code reads at run time: package data, found through ``importlib.resources``.

Manifests and the default model (``models/``), board profiles, example configs and the
systemd unit (``firmware_configs/``), the CAP schema and the demo's frames all travel
inside the package, so a wheel installed with no checkout beside it finds them
(docs/architecture.md, "Package data").
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def packaged(*parts: str) -> Path:
    """The file or folder ``s4edge/<parts…>`` of the installed package."""
    resource = files("s4edge")
    for part in parts:
        resource = resource / part
    if not isinstance(resource, Path):
        # onnxruntime, lxml and OpenCV open files by path; a zipped install has none
        raise FileNotFoundError(f"s4edge is installed as a zip ({resource}); install it as files (pip install s4edge)")
    return resource
