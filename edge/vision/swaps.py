"""A camera's model swap, kept beside the node's outbox so that it outlives a reload and a restart.

``swap_model`` changes the model a camera runs without touching node.yaml. Held in memory only,
a swap was lost without a word each time the camera was built again (a reload that changed its
part of the config or the alert lifecycle, SIGHUP, a restart), and the heartbeat then named
node.yaml's model. The vision source keeps each swap in ``<outbox>.<camera>.model-swap.json`` in
the node's state folder: the model swapped in, the model the config named then (``over``), and
when. Built again, the camera runs the swapped model while the config still names ``over``; a
config that names another model wins over the older swap, which is then dropped, as it is by a
swap back to the config's own model.

One small JSON object per camera (a camera never writes another's), rewritten whole through a
temporary file and a rename, so that a power cut leaves the old swap or the new one. It holds
model names, the camera's name and a time: nothing secret. A file that cannot be read, or that a
hand edit broke, is refused with a warning, and the camera runs the config's model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from s4edge.edge.config import problems_by_key
from s4edge.edge.vision.manifest import MODEL_NAME
from s4edge.files import replace_file


def swap_path(outbox: Path, camera: str) -> Path:
    """Named after the outbox, as its incident journal is: nodes whose outboxes share a folder keep one each."""
    return outbox.with_name(f"{outbox.name}.{camera}.model-swap.json")


class Swap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str = Field(max_length=32)
    model: str = Field(pattern=MODEL_NAME, description="The model swapped in")
    over: str = Field(pattern=MODEL_NAME, description="The model the config named when it was swapped in")
    at: AwareDatetime


class SwapRecordError(ValueError):
    """A kept swap that cannot be read or is not one this node wrote; the message names the file."""


class SwapRecord:
    """The swap kept for one camera."""

    def __init__(self, path: Path, camera: str) -> None:
        self.path = path
        self.camera = camera

    def read(self) -> Swap | None:
        """The swap kept, or None when there is none; raises SwapRecordError for a damaged file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SwapRecordError(f"cannot read {self.path} ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            swap = Swap.model_validate_json(text)
        except ValidationError as exc:  # torn, or edited by hand: its values stay unshown, as a config's
            raise SwapRecordError(f"{self.path} is not a model swap: {problems_by_key(exc)}") from None
        if swap.camera != self.camera:
            raise SwapRecordError(f"{self.path} holds a swap of camera {swap.camera!r}, not of {self.camera!r}")
        return swap

    def keep(self, swap: Swap) -> None:
        """Replace the kept swap with ``swap``; raises OSError (a full disk, a read-only folder)."""
        replace_file(self.path, swap.model_dump_json())

    def drop(self) -> None:
        """Forget the kept swap; raises OSError when the file stays."""
        self.path.unlink(missing_ok=True)
