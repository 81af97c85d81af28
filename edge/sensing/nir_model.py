"""Saving and loading PLS models without pickle (docs/architecture.md, "Models"): the arrays go to
an ``.npz`` (loaded with ``allow_pickle=False``), everything else to a ``.json`` that
records the npz's sha256. A model whose npz does not match is refused.

The outlier gate's calibration (method, α, cross-validated rejection rate) is an optional
``gate`` object in the JSON: files written before it existed load with ``model.gate``
None and their stored limits, and readers that predate it ignore it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from s4edge.edge.sensing.chemometrics import GateCalibration, PLSModel, Preprocess

FORMAT = "s4edge-pls/1"
ARRAYS = ("wavelengths_nm", "x_mean", "coef", "intercept", "rotations", "loadings", "score_var")


class ModelFileError(ValueError):
    """A model that cannot be trusted or read; says which file and what to do."""


def save_model(model: PLSModel, path: Path, name: str, version: str = "1") -> str:
    """Write ``path`` (.json) and its .npz beside it; returns the npz's sha256."""
    path = Path(path).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{k: getattr(model, k) for k in ARRAYS})
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    path.with_suffix(".npz").write_bytes(blob)
    meta = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "kind": model.kind,
        "targets": model.targets,
        "preprocess": asdict(model.preprocess),
        "n_components": model.n_components,
        "t2_limit": model.t2_limit,
        "q_limit": model.q_limit,
        "rmsecv": model.rmsecv,
        "n_train": model.n_train,
        "gate": None if model.gate is None else asdict(model.gate),
        "arrays": path.with_suffix(".npz").name,
        "sha256": digest,
    }
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return digest


def load_model(path: Path) -> tuple[PLSModel, dict[str, Any]]:
    path = Path(path).with_suffix(".json")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ModelFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        blob = (path.parent / meta["arrays"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: cannot read the model ({exc}); train it again with `s4edge nir train`") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("sha256"):
        raise ModelFileError(
            f"{path}: arrays file sha256 {digest} does not match the recorded {meta.get('sha256')}; "
            "the model was altered or corrupted: refusing it"
        )
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in ARRAYS}
        model = PLSModel(
            kind=meta["kind"],
            preprocess=Preprocess(**meta["preprocess"]),
            targets=[str(t) for t in meta["targets"]],
            t2_limit=float(meta["t2_limit"]),
            q_limit=float(meta["q_limit"]),
            rmsecv=[float(e) for e in meta["rmsecv"]],
            n_train=int(meta["n_train"]),
            gate=_gate(meta.get("gate")),
            **arrays,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: model content is incomplete ({exc})") from None
    return model, meta


def _gate(stored: Any) -> GateCalibration | None:
    if stored is None:
        return None  # a model trained before the gate was calibrated by cross-validation
    if not isinstance(stored, dict):
        raise ValueError(f"gate {stored!r} is not an object")
    given = {f.name: stored[f.name] for f in fields(GateCalibration)}  # KeyError names a missing one
    return GateCalibration(
        method=str(given.pop("method")), folds=int(given.pop("folds")), **{k: float(v) for k, v in given.items()}
    )
