"""Chemometrics for NIR spectra: preprocessing, PLS regression and PLS-DA with the
number of latent variables chosen by cross-validation, and an outlier gate so that
a spectrum unlike anything in the training set is reported as "unknown" instead of
being forced into a class.

- SNV: each spectrum centred and scaled by its own mean and standard deviation
  (Barnes, Dhanoa & Lister 1989), removing multiplicative scatter.
- Savitzky-Golay derivative (``scipy.signal.savgol_filter``), removing baselines.
- Mean centring is part of the PLS model (scikit-learn ``PLSRegression``, scale=False).
- Outlier gate (MacGregor & Kourti 1995): Hotelling T² of the scores against its
  F-distribution limit for a new observation, T²_lim = A(n−1)(n+1)/(n(n−A))·F(α; A, n−A),
  and the Q residual (SPE) against the Jackson–Mudholkar (1979) limit (Box's χ²
  approximation where JM breaks down) computed from the eigenvalues of the
  cross-validated residuals (training residuals alone are too
  optimistic with few samples and many wavelengths).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sklearn.model_selection import KFold, StratifiedKFold

Array = npt.NDArray[np.float64]
UNKNOWN = "unknown"


class SpectrumError(ValueError):
    """Spectra the model cannot take: wrong length, NaN/inf, not 2-D."""


@dataclass(frozen=True)
class Preprocess:
    snv: bool = True
    sg_window: int = 15  # odd number of points; 0: no Savitzky-Golay filter
    sg_polyorder: int = 2
    sg_deriv: int = 1

    def apply(self, x: Array) -> Array:
        out = np.asarray(x, dtype=np.float64)
        if self.snv:
            sd = out.std(axis=1, keepdims=True)
            # a flat spectrum (dark detector) stays flat at 0, and the outlier gate rejects it
            out = (out - out.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
        if self.sg_window:
            out = _savgol(out, self.sg_window, self.sg_polyorder, self.sg_deriv)
        return out


@functools.lru_cache(maxsize=8)
def _savgol_parts(n: int, window: int, polyorder: int, deriv: int) -> tuple[Array, Array, Array]:
    """``savgol_filter(mode="interp")`` split into its parts, computed once per shape:
    the convolution kernel for the interior, and the edge polynomial fits as small
    matrices (the filter is linear, so filtering the identity yields them). Calling
    savgol_filter per spectrum recomputes its least-squares kernel every time (~1 ms)."""
    from scipy.signal import savgol_coeffs, savgol_filter  # loaded on first use, not at config parsing

    if window > n:
        raise SpectrumError(f"Savitzky-Golay window {window} is longer than the spectrum ({n} points)")
    full = savgol_filter(np.eye(n), window, polyorder, deriv=deriv, axis=1)
    half = window // 2
    return savgol_coeffs(window, polyorder, deriv=deriv), full[:window, :half], full[n - window :, n - half :]


def _savgol(x: Array, window: int, polyorder: int, deriv: int) -> Array:
    from scipy.ndimage import convolve1d

    kernel, left, right = _savgol_parts(x.shape[1], window, polyorder, deriv)
    out: Array = convolve1d(x, kernel, axis=1, mode="constant")
    half = window // 2
    out[:, :half] = x[:, :window] @ left
    out[:, -half:] = x[:, -window:] @ right
    return out


def check_spectra(x: npt.ArrayLike, n_points: int) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise SpectrumError(f"expected spectra as a 2-D array (samples × wavelengths), got {arr.ndim}-D")
    if arr.shape[1] != n_points:
        raise SpectrumError(f"spectrum has {arr.shape[1]} points, the model expects {n_points}; resample it first")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = sorted({int(r) for r in np.nonzero(bad)[0]})
        raise SpectrumError(f"spectra {rows} contain NaN or infinite values ({int(bad.sum())} points)")
    return arr


@dataclass(frozen=True)
class Prediction:
    values: Array  # regression: predicted y; classification: one score per class
    label: str | None  # classification only: the class, or "unknown" when the gate rejects
    confidence: float
    t2: float
    q: float
    t2_limit: float
    q_limit: float

    @property
    def outlier(self) -> bool:
        return self.t2 > self.t2_limit or self.q > self.q_limit


@dataclass
class PLSModel:
    """Everything needed to predict, as plain arrays (saved as JSON + npz, see nir_model.py)."""

    kind: Literal["regression", "classification"]
    preprocess: Preprocess
    wavelengths_nm: Array
    x_mean: Array
    coef: Array  # (n_targets, n_points), as scikit-learn's ``coef_``
    intercept: Array
    rotations: Array  # (n_points, A): x → scores
    loadings: Array  # (n_points, A): scores → x
    score_var: Array  # (A,) variance of the training scores
    t2_limit: float
    q_limit: float
    targets: list[str]  # regression: target names; classification: class labels
    rmsecv: list[float] = field(default_factory=list)  # by number of components, 1..max
    n_train: int = 0

    @property
    def n_components(self) -> int:
        return int(self.rotations.shape[1])

    def _scores(self, x: Array) -> tuple[Array, Array]:
        xc = self.preprocess.apply(check_spectra(x, len(self.x_mean))) - self.x_mean
        return xc, xc @ self.rotations

    def predict(self, x: npt.ArrayLike) -> list[Prediction]:
        xc, t = self._scores(np.asarray(x, dtype=np.float64))
        y = xc @ self.coef.T + self.intercept  # as PLSRegression.predict
        t2 = np.sum(t**2 / self.score_var, axis=1)
        q = np.sum((xc - t @ self.loadings.T) ** 2, axis=1)
        out = []
        for i in range(len(y)):
            label, confidence = None, 1.0
            outlier = t2[i] > self.t2_limit or q[i] > self.q_limit
            if self.kind == "classification":
                best = int(np.argmax(y[i]))
                # PLS-DA scores are not probabilities: clip the winning class's score to 0..1
                confidence = 0.0 if outlier else float(np.clip(y[i, best], 0.0, 1.0))
                label = UNKNOWN if outlier else self.targets[best]
            elif outlier:
                confidence = 0.0
            out.append(Prediction(y[i], label, confidence, float(t2[i]), float(q[i]), self.t2_limit, self.q_limit))
        return out


def _cv_folds(y: Array, classes: bool, folds: int) -> KFold | StratifiedKFold:
    from sklearn.model_selection import KFold, StratifiedKFold

    if classes:
        smallest = int(np.min(np.bincount(np.argmax(y, axis=1))))
        return StratifiedKFold(min(folds, max(2, smallest)), shuffle=True, random_state=0)
    return KFold(folds, shuffle=True, random_state=0)


def _split(cv: KFold | StratifiedKFold, x: Array, y: Array) -> list[tuple[Array, Array]]:
    from sklearn.model_selection import StratifiedKFold

    labels = np.argmax(y, axis=1) if isinstance(cv, StratifiedKFold) else None
    return list(cv.split(x, labels))


def cross_validate(x: Array, y: Array, max_components: int, cv: KFold | StratifiedKFold) -> list[float]:
    """RMSECV for 1..max_components latent variables."""
    from sklearn.cross_decomposition import PLSRegression

    splits = _split(cv, x, y)
    errors = []
    for a in range(1, max_components + 1):
        pred = np.empty_like(y)
        for train, test in splits:
            pls = PLSRegression(n_components=a, scale=False).fit(x[train], y[train])
            pred[test] = pls.predict(x[test]).reshape(len(test), -1)
        errors.append(float(np.sqrt(np.mean((pred - y) ** 2))))
    return errors


def choose_components(rmsecv: list[float], tolerance: float = 0.02) -> int:
    """The fewest latent variables whose RMSECV is within ``tolerance`` of the best
    (a parsimony rule: extra components that gain < 2 % mostly fit noise)."""
    best = min(rmsecv)
    return next(a for a, e in enumerate(rmsecv, start=1) if e <= best * (1 + tolerance))


def q_limit(eigenvalues: Array, alpha: float) -> float:
    """Upper (1 − alpha) limit of Q = Σ e² for residual covariance eigenvalues λ.

    Jackson–Mudholkar (1979) when its h0 is positive; otherwise (one dominant residual
    direction, where h0 ≤ 0 and the formula breaks down) Box's (1954) moment-matched
    approximation Q ~ g·χ²(h), g = θ2/θ1, h = θ1²/θ2 (Nomikos & MacGregor 1995).
    """
    from scipy import stats

    theta = [float(np.sum(eigenvalues**i)) for i in (1, 2, 3)]
    h0 = 1.0 - 2.0 * theta[0] * theta[2] / (3.0 * theta[1] ** 2)
    if h0 > 0:
        c = float(stats.norm.ppf(1.0 - alpha))
        term = c * np.sqrt(2.0 * theta[1] * h0**2) / theta[0] + 1.0 + theta[1] * h0 * (h0 - 1.0) / theta[0] ** 2
        return float(theta[0] * term ** (1.0 / h0))
    g, h = theta[1] / theta[0], theta[0] ** 2 / theta[1]
    return float(g * stats.chi2.ppf(1.0 - alpha, h))


def fit(
    spectra: npt.ArrayLike,
    y: npt.ArrayLike,
    wavelengths_nm: npt.ArrayLike,
    *,
    kind: Literal["regression", "classification"] = "regression",
    targets: list[str] | None = None,
    preprocess: Preprocess = Preprocess(),
    max_components: int = 12,
    folds: int = 5,
    alpha: float = 0.01,
    n_components: int | None = None,
) -> PLSModel:
    """PLS (regression) or PLS-DA (``kind="classification"``, ``y`` = class labels)."""
    from scipy import stats
    from sklearn.cross_decomposition import PLSRegression

    wl = np.asarray(wavelengths_nm, dtype=np.float64).ravel()
    x_raw = check_spectra(spectra, len(wl))
    if kind == "classification":
        labels = np.asarray(y).astype(str).ravel()
        names = sorted(set(labels.tolist()))
        if len(names) < 2:
            raise ValueError("PLS-DA needs at least two classes")
        yy = (labels[:, None] == np.asarray(names)[None, :]).astype(np.float64)
    else:
        yy = np.asarray(y, dtype=np.float64).reshape(len(x_raw), -1)
        names = targets or [f"y{i}" for i in range(yy.shape[1])]
    if len(yy) != len(x_raw):
        raise ValueError(f"{len(x_raw)} spectra but {len(yy)} reference values")
    x = preprocess.apply(x_raw)
    cv = _cv_folds(yy, kind == "classification", folds)
    limit = min(max_components, len(x) - len(x) // cv.get_n_splits() - 1)
    rmsecv = cross_validate(x, yy, limit, cv)
    a = n_components or choose_components(rmsecv)
    pls = PLSRegression(n_components=a, scale=False).fit(x, yy)
    scores = pls.x_scores_
    n = len(x)
    t2_limit = a * (n - 1) * (n + 1) / (n * (n - a)) * float(stats.f.ppf(1 - alpha, a, n - a))
    # Q limit from cross-validated residuals: each spectrum against a model that never saw it
    residuals = np.empty_like(x)
    for train, test in _split(cv, x, yy):
        fold = PLSRegression(n_components=a, scale=False).fit(x[train], yy[train])
        xc = x[test] - fold._x_mean
        residuals[test] = xc - (xc @ fold.x_rotations_) @ fold.x_loadings_.T
    eig = np.linalg.svd(residuals, compute_uv=False) ** 2 / (n - 1)
    return PLSModel(
        kind=kind,
        preprocess=preprocess,
        wavelengths_nm=wl,
        x_mean=np.asarray(pls._x_mean, dtype=np.float64),
        coef=np.asarray(pls.coef_, dtype=np.float64),
        intercept=np.asarray(pls.intercept_, dtype=np.float64),
        rotations=np.asarray(pls.x_rotations_, dtype=np.float64),
        loadings=np.asarray(pls.x_loadings_, dtype=np.float64),
        score_var=np.asarray(scores.var(axis=0, ddof=1), dtype=np.float64),
        t2_limit=float(t2_limit),
        q_limit=q_limit(eig[eig > 0], alpha),
        targets=names,
        rmsecv=rmsecv,
        n_train=n,
    )
