"""A file replaced whole, so that a crash or a power cut leaves the old text or the new one,
never a torn mix. Every layer writes such files (the incident journal, a kept model swap, a
sensor calibration, the fleet's ACL), so it imports nothing of ours."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a hidden file beside ``path``, flush it to the disk, and rename it over
    ``path``. Raises OSError (a full disk, a read-only folder); the staged file is then gone."""
    staged = path.with_name(f".{path.name}.tmp")
    try:
        with staged.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
