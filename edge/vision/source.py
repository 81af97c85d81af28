"""The ``vision`` source plugin: one camera, one detector, its scene rules.

Validation touches neither the camera nor the model:
OpenCV and onnxruntime load inside ``build``'s collaborators, when the node starts.
``preflight`` (``s4edge agent check``) finds offline what would stop the camera there (a model
the catalogue lacks, weights neither cached nor pullable) or fault it (a replayed file that is not there).
A model swapped in by the ``swap_model`` command is kept beside the outbox (``swaps.py``) and
runs again when the camera is built again, until the config names another model.

```yaml
sources:
  - type: vision
    name: cam0
    camera: {url: "replay:/var/lib/s4edge/clip.avi", loop: true}
    model: {name: fastestdet}
    scene:
      zones: [{name: centre, polygon: [[0.3, 0.3], [0.7, 0.3], [0.7, 0.9], [0.3, 0.9]]}]
      rules: [{type: intrusion, name: centre-intrusion, zone: centre}]
```
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from s4edge.edge.alerts import IncidentBook
from s4edge.edge.config import CameraURL
from s4edge.edge.sources import SourceContext
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.backends import BackendOptions
from s4edge.edge.vision.capture import Backoff, Capture
from s4edge.edge.vision.motion import MotionConfig, MotionGate
from s4edge.edge.vision.pipeline import FrameDetector, SwapResult, VisionPipeline
from s4edge.edge.vision.snapshots import SnapshotConfig, SnapshotWriter
from s4edge.edge.vision.swaps import Swap, SwapRecord, SwapRecordError, swap_path
from s4edge.edge.vision.tracker import Tracker, TrackerConfig

if TYPE_CHECKING:
    from s4edge.edge.vision.manifest import Manifest

log = logging.getLogger(__name__)


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, CameraURL()] = Field(
        description="Device index (0) or /dev/videoN, rtsp:// or http:// URL, video file, gst:<pipeline>, "
        "picamera2:, or replay:<file or folder>; a file relative to the config's folder"
    )
    fps: float | None = Field(default=None, gt=0, description="Replay rate; the file's own when absent")
    loop: bool = Field(default=False, description="Replay: start again at the end")
    realtime: bool = Field(default=True, description="Replay: at the clip's rate, or as fast as possible")
    width: int | None = Field(default=None, ge=16)
    height: int | None = Field(default=None, ge=16)
    pixel_format: Literal["yuyv", "mjpg", "any"] = Field(
        default="yuyv",
        description="V4L2 camera: raw YUYV frames (no JPEG to decode on the node), MJPG (for sizes and rates "
        "the USB link cannot carry raw, e.g. 1080p at 30 fps), or the camera's default",
    )
    stall_after_s: float = Field(default=5.0, gt=0, description="No frame this long is a camera fault")
    reopen_first_s: float = Field(default=0.5, gt=0)
    reopen_max_s: float = Field(default=30.0, gt=0)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A model of the catalogue (models/<name>/manifest.yaml)")
    backend: BackendOptions = BackendOptions()
    score_threshold: float | None = Field(default=None, ge=0, le=1, description="The manifest's when absent")
    pull: bool = Field(default=True, description="Fill the cache from the mirror/URL (sha256-checked) at start")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["vision"]
    name: str = Field(default="cam0", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    camera: CameraConfig
    model: ModelConfig
    motion: MotionConfig = MotionConfig()
    tracker: TrackerConfig = TrackerConfig()
    scene: SceneConfig = SceneConfig()
    snapshots: SnapshotConfig = SnapshotConfig()


def load_detector(
    config: ModelConfig, name: str | None = None, scene: SceneConfig | None = None, *, swap: bool = False
) -> FrameDetector:
    """Pull (sha256-checked) and load a catalogue model as a Detector. With ``scene``, a model whose
    labels name none of the classes a rule watches (a model added without --labels: class_N) would
    run and never raise that rule: a swap to it is refused, keeping the old model; at start the
    camera runs with a warning, as its other rules still work and the node's other sources must
    not go down with it (``preflight`` says so before)."""
    from s4edge.edge.vision.catalogue import Catalogue
    from s4edge.edge.vision.detector import Detector

    catalogue = Catalogue.from_env()
    model = name or config.name
    if config.pull:
        catalogue.pull(model)
    detector = Detector.from_catalogue(catalogue, model, config.backend, config.score_threshold)
    blind = scene.blind_rules(detector.labels) if scene is not None else []
    if blind and swap:
        raise ValueError(blind_rules_problem(model, detector.labels, blind))
    if blind:
        log.warning("%s", blind_rules_problem(model, detector.labels, blind))
    return detector


def blind_rules_problem(model: str, labels: Sequence[str], blind: Sequence[str]) -> str:
    shown = ", ".join(labels[:5]) + (f", … ({len(labels)} in all)" if len(labels) > 5 else "")
    if labels and all(re.fullmatch(r"class_\d+", label) for label in labels):  # added without --labels
        fix = f"add the model again with its labels (s4edge models add FILE --name {model} --labels FILE --force)"
    else:
        fix = "choose a model whose labels include them"
    return (
        f"model {model} cannot serve this camera's rules: its labels ({shown or 'none'}) name none of the "
        f"classes of rule {'; rule '.join(blind)}; {fix}, or change the rule's classes"
    )


class VisionSource:
    def __init__(self, config: Config, pipeline: VisionPipeline) -> None:
        self.name = config.name
        self.config = config
        self.pipeline = pipeline
        self._swaps: SwapRecord | None = None  # none outside a node (a bench): a swap lasts while the source does

    def capture(self) -> Capture:
        from s4edge.drivers.frames import open_source

        cam = self.config.camera
        size = (cam.width, cam.height) if cam.width and cam.height else None
        url = cam.url  # a file is already absolute: edge.config placed it
        replay = url.startswith("replay:")
        return Capture(
            open_source(
                url, fps=cam.fps, loop=cam.loop, realtime=cam.realtime, size=size, pixel_format=cam.pixel_format
            ),
            stall_after_s=cam.stall_after_s,
            backoff=Backoff(cam.reopen_first_s, cam.reopen_max_s),
            finite=replay and not cam.loop,
            lossless=replay and not cam.realtime,
            prepare=self.pipeline.prepare,
        )

    def run(self, ctx: SourceContext) -> None:
        self.pipeline.run(ctx, self.capture())

    def swap_model(self, args: dict[str, Any]) -> str:
        """The node's ``swap_model`` command: ``args.model`` names the new model."""
        name = args.get("model") or args.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("swap_model needs args.model, the name of a catalogue model")
        result: SwapResult = self.pipeline.swap_model(name)
        if not result.ok:
            raise ValueError(result.detail)
        return f"{self.name}: {result.detail}{self._keep(name)}"

    def _keep(self, model: str) -> str:
        """Keep the swap to ``model`` for the next time this camera is built; what the command's answer adds."""
        if self._swaps is None:
            return ""
        configured = self.config.model.name
        try:
            if model == configured:  # back to the config's own model: nothing left to keep
                self._swaps.drop()
                return ""
            self._swaps.keep(Swap(camera=self.name, model=model, over=configured, at=datetime.now(UTC)))
        except OSError as exc:  # swapped all the same: the answer and the log say it will not outlive a restart
            log.warning("camera %s: the swap to %s is not kept in %s (%s)", self.name, model, self._swaps.path, exc)
            return f"; not kept, a reload or restart goes back to node.yaml's {configured}: {exc.strerror or exc}"
        return f"; kept over node.yaml's {configured} until node.yaml names another model"

    def keep_swaps(self, outbox: Path) -> None:
        """Keep this camera's swaps beside the node's ``outbox``, and run the model a swap kept there
        names while the config still names the model it replaced. Called before the camera runs;
        it never raises: whatever it finds, the camera runs at least the config's model."""
        self._swaps = SwapRecord(swap_path(outbox, self.name), self.name)
        configured = self.config.model.name
        try:
            swap = self._swaps.read()
        except SwapRecordError as exc:
            log.warning(
                "camera %s runs node.yaml's %s; its kept swap is refused (%s), the next swap_model replaces it",
                self.name,
                configured,
                exc,
            )
            return
        if swap is None:
            log.info("camera %s runs %s, as node.yaml names it", self.name, configured)
            return
        at = swap.at.isoformat(timespec="seconds")
        if swap.over != configured:  # an edited config wins over an older swap
            try:
                self._swaps.drop()
            except OSError as exc:
                log.warning("camera %s: cannot drop %s (%s)", self.name, self._swaps.path, exc)
            log.info(
                "camera %s runs %s, as node.yaml now names it; the swap to %s at %s, over %s, is dropped",
                self.name,
                configured,
                swap.model,
                at,
                swap.over,
            )
            return
        result = self.pipeline.swap_model(swap.model)
        if not result.ok:  # kept: it runs again once its model loads (`s4edge models pull`)
            log.warning(
                "camera %s runs node.yaml's %s: the model swapped in at %s does not load now (%s); "
                "the swap is kept and tried again when the camera is next built",
                self.name,
                configured,
                at,
                result.detail,
            )
            return
        log.info(
            "camera %s runs %s, swapped in at %s by a swap_model command, over node.yaml's %s",
            self.name,
            swap.model,
            at,
            configured,
        )


def _missing_replay(camera: CameraConfig) -> str | None:
    """A ``replay:`` file or folder that is not there: the camera faults (``camera_fault``) until it is,
    as an unplugged camera does; the node starts and runs its other sources meanwhile."""
    if not camera.url.startswith("replay:"):
        return None
    path = Path(camera.url.removeprefix("replay:"))  # absolute: edge.config placed it
    if path.exists():
        return None
    return (
        f"nothing at {path} to replay: the camera faults until it is there; copy the clip (or its folder "
        "of images) there, or correct camera.url"
    )


def _model_problems(model: ModelConfig, scene: SceneConfig) -> list[tuple[str, str, str]]:
    """The model is in the catalogue, its weights are cached or can be pulled as the agent starts,
    and its labels can fire every rule. Read from the manifests and the cache folder: no weights
    are read, no model is loaded."""
    from s4edge.edge.vision.catalogue import Catalogue, CatalogueError
    from s4edge.edge.vision.manifest import ManifestError

    catalogue = Catalogue.from_env()
    try:
        entry = catalogue.get(model.name)
    except (CatalogueError, ManifestError) as exc:
        return [("error", "model.name", f"{exc}; `s4edge models list` shows the catalogue")]
    problems = _weights_problems(catalogue.weights_path(entry.manifest), entry.manifest, model)
    if any(level == "error" for level, _, _ in problems):
        return problems
    try:
        labels = entry.labels()
    except (ManifestError, OSError):
        return problems  # a labels file that cannot be read: the load says why
    if blind := scene.blind_rules(labels):
        problems.append(("warning", "scene.rules", blind_rules_problem(model.name, labels, blind)))
    return problems


def _weights_problems(weights: Path, manifest: Manifest, model: ModelConfig) -> list[tuple[str, str, str]]:
    from s4edge.edge.vision.catalogue import MIRROR_ENV, default_mirror

    if weights.is_file():
        return []
    missing = f"the weights of {model.name} are not in the model cache ({weights})"
    offline = f"`s4edge models pull {model.name} --from DIR`, DIR a folder holding {manifest.file}"
    if not model.pull:
        return [("error", "model.name", f"{missing}, and model.pull is false; run {offline}")]
    origin = default_mirror() or manifest.url
    if not origin:
        nowhere = f"its manifest names no url, and {MIRROR_ENV} is not set"
        return [("error", "model.name", f"{missing}, and {nowhere}; run {offline}")]
    return [
        (
            "warning",
            "model.name",
            f"{missing}: the agent pulls them as it starts, from {origin}; if the node cannot reach that, "
            f"run `s4edge models pull {model.name}` first (offline: {offline})",
        )
    ]


def preflight(config: Config) -> list[tuple[str, str, str]]:
    """What would stop this camera as the agent starts, found offline without opening the camera or
    loading the model: (``"error"`` or ``"warning"``, the key in this source's config, what to do)."""
    problems = _model_problems(config.model, config.scene)
    if (missing := _missing_replay(config.camera)) is not None:
        problems.insert(0, ("warning", "camera.url", missing))
    return problems


def build(config: Config, book: IncidentBook) -> VisionSource:
    detector = load_detector(config.model, scene=config.scene)
    pipeline = VisionPipeline(
        config.name,
        detector,
        Tracker(config.tracker),
        SceneAnalytics(config.name, config.scene, book),
        book,
        gate=MotionGate(config.motion),
        detector_factory=lambda name: load_detector(config.model, name, config.scene, swap=True),
        snapshots=SnapshotWriter(config.snapshots, config.name) if config.snapshots.enabled else None,
    )
    return VisionSource(config, pipeline)
