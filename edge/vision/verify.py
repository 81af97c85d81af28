"""``s4edge models verify``: will this model run, and if not, what to change.

The sha256 comes first: it is cheap, and weights that are not the manifest's are never
loaded. Then the model is loaded exactly as a node loads it (``Detector``), which checks,
in ``LOAD_CHECKS`` order, that the file is for the manifest's runtime, that the runtime
opens it, that its input, outputs and quantization are what the manifest declares, that
the decoder reads its outputs and the labels name its classes, and that it runs once on a
grey frame. Each check needs the ones before it, so the first that fails ends the load and
the rest are reported as not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s4edge.edge.vision.backends import RUNTIME_NAMES, BackendError, BackendOptions
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.detector import LOAD_CHECKS, DecoderFault, Detector, ModelCheck
from s4edge.edge.vision.manifest import ManifestError, ModelEntry


@dataclass(frozen=True)
class ModelReport:
    name: str
    cached: bool  # the weights are there, shipped or in the cache
    checks: list[ModelCheck] = field(default_factory=list)
    not_run: tuple[str, ...] = ()  # the checks after the one that failed

    @property
    def failed(self) -> str | None:
        """The check that failed, if one did."""
        return next((c.name for c in self.checks if c.status == "fail"), None)


def verify_model(
    catalogue: Catalogue, name: str, load: bool = True, options: BackendOptions | None = None
) -> ModelReport:
    """The sha256 of ``name``'s weights, then (``load``) every check of loading and running it."""
    entry = catalogue.get(name)
    manifest = entry.manifest
    path = catalogue.weights_path(manifest)
    verified = catalogue.verify(name)
    if not verified.cached or verified.actual_sha256 is None:
        return ModelReport(name, cached=False)
    if not verified.ok:
        sha = ModelCheck(
            "sha256",
            "fail",
            f"{path} has sha256 {verified.actual_sha256}, the manifest says {manifest.sha256}",
            catalogue.sha_remedy(entry, path, verified.actual_sha256),
        )
        return ModelReport(name, True, [sha], LOAD_CHECKS if load else ())
    checks = [ModelCheck("sha256", "pass", f"{path} has the manifest's sha256")]
    if not load:
        return ModelReport(name, True, checks)
    try:
        Detector(entry, path, options, on_check=checks.append, audit=True)
    except (ManifestError, BackendError) as exc:
        failed = LOAD_CHECKS[len(checks) - 1]  # the checks run in order, and report only when they pass
        checks.append(_failure(failed, exc, entry))
        return ModelReport(name, True, checks, LOAD_CHECKS[LOAD_CHECKS.index(failed) + 1 :])
    return ModelReport(name, True, checks)


def _failure(check: str, exc: Exception, entry: ModelEntry) -> ModelCheck:
    if not isinstance(exc, ManifestError):  # the runtime is missing or misconfigured: its message says how
        return ModelCheck(check, "fail", str(exc), "install or configure the runtime as the message says")
    if exc.field == "file":  # its sha256 is the manifest's, so pulling it again brings the same file
        runtime = RUNTIME_NAMES[entry.manifest.runtime]
        remedy = (
            f"the weight file is the one the manifest names, and {runtime} cannot open it: export the model "
            f"again, then set file and sha256 in {entry.folder / 'manifest.yaml'}"
        )
        return ModelCheck(check, "fail", f"{exc.source}: {exc.problem}", remedy)
    if isinstance(exc, DecoderFault):  # the manifest is not at fault: editing it would not help
        family = entry.manifest.decoder.family
        remedy = f"fix or update the package of decoder family {family}, or name another decoder.family in {exc.source}"
        return ModelCheck(check, "fail", f"{exc.field}: {exc.problem}", remedy)
    return ModelCheck(check, "fail", f"{exc.field}: {exc.problem}", f"edit {exc.field} in {exc.source}")
