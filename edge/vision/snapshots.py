"""Local evidence snapshots, off by default.

When an operator turns them on, the frame that opened an incident is kept on the
node's own disk for a later, lawful review — with every person blurred beyond
recognition before the file is written. Snapshots never leave the node: nothing
here is referenced by an alert, and the retention limits (count and age) delete the
oldest first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from s4edge.edge.config import NodeFile


class SnapshotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    folder: Annotated[Path, NodeFile(relative_to="state")] = Field(
        default=Path("snapshots"), description="Local folder, relative to the outbox's; never uploaded"
    )
    max_count: int = Field(default=100, ge=1, description="Keep at most this many files")
    max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0, description="Delete files older than this")
    blur_labels: list[str] = Field(default_factory=lambda: ["person"], min_length=1)
    blur_min_score: float = Field(
        default=0.15,
        gt=0,
        le=1,
        description="Blur what the model scores this high as a blur label: far below its alert threshold, "
        "as a person it is unsure of is a person all the same",
    )
    jpeg_quality: int = Field(default=80, ge=10, le=100)


Box = tuple[float, float, float, float]


def blur_boxes(frame: Any, boxes: Sequence[Box]) -> Any:
    """A copy of ``frame`` with each normalised box blurred; the kernel scales with the
    box, so a face a few pixels wide is as unreadable as a close-up."""
    import cv2

    out = frame.copy()
    height, width = out.shape[:2]
    for x1, y1, x2, y2 in boxes:
        # a small margin: a detector's box often cuts off a head or an elbow
        mx, my = (x2 - x1) * 0.1, (y2 - y1) * 0.1
        c1, r1 = max(0, int((x1 - mx) * width)), max(0, int((y1 - my) * height))
        c2, r2 = min(width, int((x2 + mx) * width) + 1), min(height, int((y2 + my) * height) + 1)
        if c2 <= c1 or r2 <= r1:
            continue
        k = max(c2 - c1, r2 - r1) // 2 * 2 + 1
        out[r1:r2, c1:c2] = cv2.GaussianBlur(out[r1:r2, c1:c2], (k, k), 0)
    return out


class SnapshotWriter:
    def __init__(self, config: SnapshotConfig, camera: str, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.camera = camera
        self._wall = wall
        self.written = 0

    def save(self, frame: Any, labelled_boxes: Sequence[tuple[str, Box]], reason: str) -> Path | None:
        """Blur, write and prune; returns the file, or None when snapshots are off."""
        if not self.config.enabled:
            return None
        import cv2

        blurred = blur_boxes(frame, [box for label, box in labelled_boxes if label in self.config.blur_labels])
        self.config.folder.mkdir(parents=True, exist_ok=True)
        stamp = self._wall()
        safe_reason = "".join(c if c.isalnum() or c in "-_" else "_" for c in reason)[:40]
        path = self.config.folder / f"{self.camera}-{stamp:.3f}-{safe_reason}.jpg"
        if not cv2.imwrite(str(path), blurred, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]):
            raise OSError(f"{path}: could not write the snapshot")
        self.written += 1
        self.prune()
        return path

    def prune(self) -> None:
        files = sorted(self.config.folder.glob(f"{self.camera}-*.jpg"), key=lambda p: p.stat().st_mtime)
        now = self._wall()
        keep = []
        for path in files:
            if now - path.stat().st_mtime > self.config.max_age_s:
                path.unlink(missing_ok=True)
            else:
                keep.append(path)
        for path in keep[: max(0, len(keep) - self.config.max_count)]:
            path.unlink(missing_ok=True)
