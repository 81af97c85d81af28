"""Chemometrics for NIR spectra: preprocessing, PLS regression and PLS-DA with the
number of latent variables chosen by cross-validation, and an outlier gate so that
a spectrum unlike anything in the training set is reported as "unknown" instead of
being forced into a class.

- SNV: each spectrum centred and scaled by its own mean and standard deviation
  (Barnes, Dhanoa & Lister 1989), removing multiplicative scatter.
- Savitzky-Golay derivative (``scipy.signal.savgol_filter``), removing baselines.
- Mean centring is part of the PLS model (scikit-learn ``PLSRegression``, scale=False).
- Outlier gate (MacGregor & Kourti 1995): Hotelling T² of the scores and the Q residual
  (SPE), each against an upper (1 − α) limit. Both limits come from *cross-validated*
  statistics: each calibration spectrum's T² and Q under a model fit without it (the
  K folds of the component choice), to which Box's (1954) scaled χ², g·χ²(h), is
  fitted by mean and variance (Nomikos & MacGregor 1995; ``box_limit``). Training
  residuals are far too small for a new spectrum (few samples, many wavelengths: 15 %
  of held-out corn spectra rejected at α = 0.01); the F limit for a new observation
  assumes Gaussian scores and the Jackson–Mudholkar limit Gaussian residuals, and real
  spectra have heavier tails (docs/nir.md has the measured rates). With α on each
  statistic a good spectrum is rejected with probability about 1 − (1 − α)² ≈ 2α.
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
class GateCalibration:
    """How ``t2_limit`` and ``q_limit`` were set, and what they reject of the calibration
    set under cross-validation (each spectrum judged by a model that never saw it)."""

    method: str  # "cv-box": Box's g·χ²(h) fitted to the cross-validated T² and Q
    alpha: float  # upper-tail probability of each limit
    folds: int
    cv_t2_rate: float  # share of calibration spectra whose CV T² is beyond the limit
    cv_q_rate: float
    cv_rejection_rate: float  # T² or Q beyond its limit: the gate's false-rejection rate

    @property
    def expected_rejection_rate(self) -> float:
        """Two statistics at α each: 1 − (1 − α)² if they were independent (≈ 2α)."""
        return 1.0 - (1.0 - self.alpha) ** 2


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


@dataclass(frozen=True)
class Predictions:
    """A batch of predictions as arrays, one row per spectrum (``PLSModel.predict_batch``)."""

    values: Array  # (n, n_targets): regression y, or one PLS-DA score per class
    labels: list[str] | None  # classification only: class or "unknown", per spectrum
    confidence: Array
    t2: Array
    q: Array
    t2_limit: float
    q_limit: float

    @property
    def outlier(self) -> npt.NDArray[np.bool_]:
        return (self.t2 > self.t2_limit) | (self.q > self.q_limit)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Prediction:
        label = None if self.labels is None else self.labels[i]
        return Prediction(
            self.values[i], label, float(self.confidence[i]), float(self.t2[i]), float(self.q[i]),
            self.t2_limit, self.q_limit,
        )  # fmt: skip


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
    gate: GateCalibration | None = None  # None: a model file from before the gate was calibrated

    @property
    def n_components(self) -> int:
        return int(self.rotations.shape[1])

    def _scores(self, x: Array) -> tuple[Array, Array]:
        xc = self.preprocess.apply(check_spectra(x, len(self.x_mean))) - self.x_mean
        return xc, xc @ self.rotations

    def predict_batch(self, x: npt.ArrayLike) -> Predictions:
        """All spectra (rows of ``x``) in one pass of matrix products."""
        xc, t = self._scores(np.asarray(x, dtype=np.float64))
        y = xc @ self.coef.T + self.intercept  # as PLSRegression.predict
        t2 = np.sum(t**2 / self.score_var, axis=1)
        q = np.sum((xc - t @ self.loadings.T) ** 2, axis=1)
        outlier = (t2 > self.t2_limit) | (q > self.q_limit)
        labels = None
        confidence = np.where(outlier, 0.0, 1.0)
        if self.kind == "classification":
            best = np.argmax(y, axis=1)
            # PLS-DA scores are not probabilities: clip the winning class's score to 0..1
            confidence = np.where(outlier, 0.0, np.clip(y[np.arange(len(y)), best], 0.0, 1.0))
            labels = [UNKNOWN if o else self.targets[b] for o, b in zip(outlier.tolist(), best.tolist(), strict=True)]
        return Predictions(y, labels, confidence, t2, q, self.t2_limit, self.q_limit)

    def predict(self, x: npt.ArrayLike) -> list[Prediction]:
        batch = self.predict_batch(x)
        return [batch[i] for i in range(len(batch))]


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


def box_limit(values: Array, alpha: float) -> float:
    """Upper (1 − alpha) limit for a new value of a positive statistic, from a sample of n
    values of it: Box's (1954) g·χ²(h) with the sample's mean m and variance v matched,
    h = 2m²/v (Nomikos & MacGregor 1995, the SPE limit). As g = m/h is itself estimated
    from the n values, a new value over m is F(h, n·h) (a sum of n g·χ²(h) is g·χ²(n·h)),
    so the limit is m·F(1 − alpha; h, n·h), which tends to g·χ²(1 − alpha; h) for large n.
    A sample without spread gives its maximum."""
    from scipy import stats

    n, m, v = len(values), float(np.mean(values)), float(np.var(values, ddof=1))
    if not (m > 0 and v > 0):
        return float(np.max(values))
    h = 2 * m * m / v
    return float(m * stats.f.ppf(1.0 - alpha, h, n * h))


def cv_gate_statistics(x: Array, y: Array, a: int, splits: list[tuple[Array, Array]]) -> tuple[Array, Array]:
    """T² and Q of every calibration spectrum (preprocessed) under an ``a``-component model
    fit on the other folds, as a new spectrum meets the final model."""
    from sklearn.cross_decomposition import PLSRegression

    t2, q = np.empty(len(x)), np.empty(len(x))
    for train, test in splits:
        fold = PLSRegression(n_components=a, scale=False).fit(x[train], y[train])
        xc = x[test] - fold._x_mean
        t = xc @ fold.x_rotations_
        t2[test] = np.sum(t**2 / fold.x_scores_.var(axis=0, ddof=1), axis=1)
        q[test] = np.sum((xc - t @ fold.x_loadings_.T) ** 2, axis=1)
    return t2, q


def calibrate_gate(
    t2_cv: Array, q_cv: Array, alpha: float, splits: list[tuple[Array, Array]]
) -> tuple[float, float, GateCalibration]:
    """(T² limit, Q limit, calibration) from cross-validated statistics. The reported rates
    judge each fold's spectra by limits fit to the other folds' statistics: limits checked
    against the values they were fit to would look better than they are."""
    t2_out, q_out = np.zeros(len(t2_cv), dtype=bool), np.zeros(len(q_cv), dtype=bool)
    for train, test in splits:
        t2_out[test] = t2_cv[test] > box_limit(t2_cv[train], alpha)
        q_out[test] = q_cv[test] > box_limit(q_cv[train], alpha)
    gate = GateCalibration(
        method="cv-box", alpha=alpha, folds=len(splits), cv_t2_rate=float(t2_out.mean()),
        cv_q_rate=float(q_out.mean()), cv_rejection_rate=float((t2_out | q_out).mean()),
    )  # fmt: skip
    return box_limit(t2_cv, alpha), box_limit(q_cv, alpha), gate


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
    """PLS (regression) or PLS-DA (``kind="classification"``, ``y`` = class labels); ``alpha``
    is the upper-tail probability of each outlier limit (T² and Q)."""
    from sklearn.cross_decomposition import PLSRegression

    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha {alpha} is not a tail probability: choose one in (0, 0.5), e.g. 0.01")
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
    splits = _split(cv, x, yy)
    t2_cv, q_cv = cv_gate_statistics(x, yy, a, splits)
    t2_limit, q_limit, gate = calibrate_gate(t2_cv, q_cv, alpha, splits)
    return PLSModel(
        kind=kind,
        preprocess=preprocess,
        wavelengths_nm=wl,
        x_mean=np.asarray(pls._x_mean, dtype=np.float64),
        coef=np.asarray(pls.coef_, dtype=np.float64),
        intercept=np.asarray(pls.intercept_, dtype=np.float64),
        rotations=np.asarray(pls.x_rotations_, dtype=np.float64),
        loadings=np.asarray(pls.x_loadings_, dtype=np.float64),
        score_var=np.asarray(pls.x_scores_.var(axis=0, ddof=1), dtype=np.float64),
        t2_limit=t2_limit,
        q_limit=q_limit,
        targets=names,
        rmsecv=rmsecv,
        n_train=len(x),
        gate=gate,
    )
