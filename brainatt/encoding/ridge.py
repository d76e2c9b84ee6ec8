"""Ridge regression for many targets (voxels), with a per-target α chosen by K-fold cross-validation.

The project's own solver (see docs/encoding.md, "Ridge"). Two scikit-learn-style estimators share the same
solver functions:

- `Ridge`: fixed α (a scalar, or one per target);
- `RidgeCV`: per-target α from a log grid, chosen by K-fold (or grouped K-fold) cross-validation, then a refit on
  all samples.

How it is computed (n samples, p features, t targets, a values of α, k ≤ p the rank of a training Gram matrix):

- **Centering.** With ``fit_intercept=True`` every fit centers X and Y on the means of the samples it is fitted
  on: inside each CV fold on the *train-fold* means (the validation rows are centered with those too), and on
  all-sample means for the refit. The intercept is ``mean(Y) − mean(X) · coef``. X and Y are first centered
  on all-sample means (which changes no fold's answer) so the fold-level corrections, which are rank-one updates
  of cross-products, stay small and do not cancel in float32.
- **One decomposition per fold, reused for every α.** The train-fold Gram matrix ``XᵀX`` (p × p, float64) is
  eigendecomposed, ``V diag(s²) Vᵀ``; then ``coef(α) = V diag(1 / (s² + α)) Z`` with ``Z = Vᵀ Xᵀ Y``. Train-fold
  cross-products are all-sample ones minus validation ones, so no train-fold copy of Y is made.
- **Validation error without predictions.** For a validation block (Xv, Yv centered with the train-fold means),
  with ``e = 1 / (s² + α)``, ``B = Vᵀ Xvᵀ Yv`` and ``G = Vᵀ Xvᵀ Xv V = Fᵀ F``, the squared error of target j is
  ``‖yv_j‖² − 2 Σ_k e_k B_kj Z_kj + ‖F diag(e) z_j‖²``. Per α this costs r·k·t (r = rank G ≤ min(n_val, k))
  instead of n_val·k·t for forming predictions, and never materialises an (a, n_val, t) array.
  ``bench/ridge.py`` (bench/RESULTS.md, "## ridge") measures it against himalaya's hat-matrix path.
- **Precision.** p × p work (Gram matrices, eigendecompositions) is float64; the products that scale with t
  (Xᵀ Y, the projections, ``F diag(e) Z``) run in the compute ``dtype`` (float32 by default); per-fold errors
  are combined and averaged over folds in float64.
- **Memory.** Targets are processed in chunks of ``n_targets_batch`` columns; ``Y`` is read one chunk at a time
  (a numpy array, a memmap or an h5py dataset all work), so the working set is O(n · batch + p² · folds).
- **Refit.** Each target's coefficients are ``V diag(1 / (s² + α_j)) z_j`` in the all-sample eigenbasis: scaling
  the columns of Z by their own filter makes the refit of all targets, whatever their α, one matrix product, which
  is what grouping targets by α achieves in other solvers.

α selection criterion: the mean over folds of the negative mean squared error on the validation fold (each fold's
SSE / n_val), plus ``1e-10 · log α`` so that ties go to the larger α. This is himalaya's default criterion
(``l2_neg_loss`` with the same tie-break), so the choices agree with himalaya's ``RidgeCV`` on the same folds;
it is also the loss ridge minimises. Fold R² would weight folds by their target variance instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold
from tqdm import tqdm

from brainatt.io import BrainattError

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = np.logspace(-2, 10, 13)
"""Default α grid: one value per decade from 1e-2 to 1e10 (wide enough for standardised features, n ≤ 1e5)."""

_TIE_BREAK = 1e-10  # score slope per unit log α, so that equal scores select the larger α (as himalaya does)
_DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------------------------- input checks


def _check_X(X: Any, who: str, n_features: int | None = None) -> np.ndarray:
    """X as a 2-D float64 array with finite values, or a BrainattError naming the problem."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise BrainattError(f"{who}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise BrainattError(f"{who}: X must be numeric, got dtype {X.dtype}")
    if n_features is not None and X.shape[1] != n_features:
        raise BrainattError(f"{who}: X has {X.shape[1]} features but the model was fitted on {n_features}")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(0))
        raise BrainattError(
            f"{who}: X contains NaN or infinite values in {len(bad)} feature column(s) (first: {bad[0]}); "
            "impute or drop them before fitting"
        )
    return X


def _check_Y(Y: Any, n_samples: int, who: str) -> tuple[Any, bool]:
    """Y as a 2-D array-like sliceable by columns (kept out of memory if it is, e.g., an h5py dataset).

    Returns the array and whether the input was 1-D (so outputs are raveled back).
    """
    if not hasattr(Y, "shape") or not hasattr(Y, "__getitem__"):
        Y = np.asarray(Y)
    ravel = len(Y.shape) == 1
    if ravel:
        Y = np.asarray(Y)[:, None]
    if len(Y.shape) != 2:
        raise BrainattError(f"{who}: Y must be 1-D or 2-D (n_samples, n_targets), got shape {Y.shape}")
    if Y.shape[0] != n_samples:
        raise BrainattError(
            f"{who}: X has {n_samples} rows but Y has {Y.shape[0]}; they must hold the same samples in the same order"
        )
    if Y.shape[1] == 0:
        raise BrainattError(f"{who}: Y has no targets (shape {Y.shape})")
    return Y, ravel


def _check_dtype(dtype: str, who: str) -> np.dtype:
    if dtype not in _DTYPES:
        raise BrainattError(f"{who}: dtype must be one of {_DTYPES}, got {dtype!r}")
    return np.dtype(dtype)


def _check_alphas(alphas: Any, who: str) -> np.ndarray:
    """A sorted 1-D float64 array of distinct positive finite α values."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all() or (a <= 0).any():
        raise BrainattError(f"{who}: alphas must be a non-empty 1-D list of positive finite numbers, got {alphas!r}")
    return np.unique(a)


# ---------------------------------------------------------------------------------------------- solver pieces


@dataclass(frozen=True)
class _Basis:
    """Eigenbasis of a centered Gram matrix ``XᵀX = V diag(s2) Vᵀ``, truncated to its numerical rank."""

    V: np.ndarray  # (p, k) in the compute dtype
    Vt: np.ndarray  # (k, p) C-contiguous copy of V.T, for Vᵀ @ (p, t) products
    s2: np.ndarray  # (k,) float64 eigenvalues, > 0

    def filters(self, alphas: np.ndarray) -> np.ndarray:
        """(k, len(alphas)) float64 spectral filters ``1 / (s² + α)``."""
        return 1.0 / (self.s2[:, None] + alphas[None, :])


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD float64 matrix with eigenvalues above p·eps·max (its numerical rank)."""
    w, v = np.linalg.eigh(a)
    keep = w > max(w[-1], 0.0) * a.shape[0] * np.finfo(np.float64).eps
    return w[keep], v[:, keep]


def _basis(gram: np.ndarray, dtype: np.dtype) -> tuple[_Basis, np.ndarray]:
    """The `_Basis` of a float64 Gram matrix, and its float64 eigenvectors."""
    s2, v = _psd_eigh(gram)
    V = v.astype(dtype)
    return _Basis(V=V, Vt=np.ascontiguousarray(V.T), s2=s2), v


def _center_X(X: np.ndarray, fit_intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """X centered on its column means (float64) and the means (zeros without an intercept)."""
    mean = X.mean(0) if fit_intercept else np.zeros(X.shape[1])
    return X - mean, mean


def _target_chunks(
    Y: Any, batch: int, dtype: np.dtype, fit_intercept: bool, who: str
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield (column slice, centered chunk in ``dtype``, chunk means in float64), reading Y one chunk at a time."""
    n_targets = Y.shape[1]
    for start in tqdm(range(0, n_targets, batch), desc=f"{who} target chunks", unit="chunk", disable=None):
        cols = slice(start, min(start + batch, n_targets))
        chunk = np.asarray(Y[:, cols])
        if not np.issubdtype(chunk.dtype, np.number) or np.issubdtype(chunk.dtype, np.complexfloating):
            raise BrainattError(f"{who}: Y must be real-valued, got dtype {chunk.dtype}")
        finite = np.isfinite(chunk).all(0)
        if not finite.all():
            raise BrainattError(
                f"{who}: Y contains NaN or infinite values (first in target column {start + np.argmin(finite)}); "
                "drop or impute those targets before fitting"
            )
        mean = chunk.mean(0, dtype=np.float64) if fit_intercept else np.zeros(chunk.shape[1])
        yield cols, (chunk - mean).astype(dtype, copy=False), mean


def _refit(basis: _Basis, XtY: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Ridge coefficients (p, t) for per-target ``alpha`` (t,) from ``XtY = XcᵀYc`` (p, t) in the all-sample basis."""
    Z = basis.Vt @ XtY
    Z *= (1.0 / (basis.s2[:, None] + alpha[None, :])).astype(Z.dtype)
    return basis.V @ Z


@dataclass(frozen=True)
class _Fold:
    """What one CV fold needs for every target chunk: its train eigenbasis and its validation geometry."""

    val: np.ndarray  # validation row indices
    X_val: np.ndarray  # (n_val, p) rows of the all-sample-centered X, compute dtype
    x_mean_train: np.ndarray  # (p,) float64 train-fold means of the all-sample-centered X
    x_sum_val: np.ndarray  # (p,) float64 column sums of X_val
    basis: _Basis  # eigenbasis of the train-fold-centered train Gram matrix
    factor: np.ndarray  # (r, k) F with FᵀF = Vᵀ Xvᵀ Xv V, Xv centered with the train-fold means

    @property
    def n_val(self) -> int:
        return len(self.val)


def _prepare_folds(
    Xc: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], dtype: np.dtype, fit_intercept: bool
) -> list[_Fold]:
    """Per-fold eigenbases and validation factors from all-sample quantities (float64, O(n·p² + p³) per fold)."""
    n = Xc.shape[0]
    gram = Xc.T @ Xc
    x_sum = Xc.sum(0)
    folds = []
    for _, val in splits:
        Xv = Xc[val]
        n_val, n_train = len(val), n - len(val)
        sv = Xv.sum(0)
        m = (x_sum - sv) / n_train if fit_intercept else np.zeros_like(sv)
        gv_raw = Xv.T @ Xv
        # Train Gram from all-sample minus validation cross-products, centered on the train-fold means.
        basis, v = _basis(gram - gv_raw - n_train * np.outer(m, m), dtype)
        # Validation Gram with the validation rows centered on the train-fold means.
        gv = gv_raw - np.outer(m, sv) - np.outer(sv, m) + n_val * np.outer(m, m)
        lam, q = _psd_eigh(v.T @ gv @ v)
        factor = (q * np.sqrt(lam)).T.astype(dtype)
        folds.append(_Fold(val, Xv.astype(dtype), m, sv, basis, np.ascontiguousarray(factor)))
    return folds


def _fold_neg_mse(
    fold: _Fold, XtY: np.ndarray, XvtYv: np.ndarray, Yc: np.ndarray, alphas: np.ndarray, fit_intercept: bool
) -> np.ndarray:
    """(n_alphas, t) float64 negative validation MSE of one fold for every α, for one target chunk.

    ``XtY`` (p, t) is the all-sample cross-product and ``XvtYv`` the validation one, both of the all-sample-centered
    data; ``Yc`` is the centered chunk.
    """
    n_val, n_train = fold.n_val, len(Yc) - fold.n_val
    m = fold.x_mean_train
    Yv = Yc[fold.val]
    sy_v = Yv.sum(0, dtype=np.float64)
    my = (Yc.sum(0, dtype=np.float64) - sy_v) / n_train if fit_intercept else np.zeros_like(sy_v)
    dt = Yc.dtype
    # Train-fold-centered train cross-product and validation cross-product (train-fold means), as rank-one updates.
    A = XtY - XvtYv
    A -= np.outer(n_train * m, my).astype(dt)
    Bm = XvtYv - np.outer(m, sy_v - n_val * my).astype(dt)
    Bm -= np.outer(fold.x_sum_val, my).astype(dt)
    Z = fold.basis.Vt @ A  # (k, t)
    B = fold.basis.Vt @ Bm
    E = fold.basis.filters(alphas)  # (k, a) float64
    cross = E.T @ (B * Z).astype(np.float64)  # (a, t): Σ_k e_k B_kj Z_kj
    # ‖F diag(e) z_j‖² for every α at once: one batched product of (r, k) with (a, k, t).
    M = np.matmul(fold.factor, E.T.astype(dt)[:, :, None] * Z[None])
    quad = np.einsum("ark,ark->ak", M, M).astype(np.float64)
    yy = np.einsum("ij,ij->j", Yv, Yv).astype(np.float64) - 2 * my * sy_v + n_val * my**2  # ‖Yv − my‖²
    return -(yy - 2 * cross + quad) / n_val


def _splits(cv: Any, n: int, groups: np.ndarray | None, who: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (train, val) index pairs; train must be exactly the samples not in val."""
    if isinstance(cv, int | np.integer):
        if cv < 2:
            raise BrainattError(f"{who}: cv must be at least 2 folds, got {cv}")
        cv = GroupKFold(n_splits=int(cv)) if groups is not None else KFold(n_splits=int(cv), shuffle=False)
    try:
        splits = [(np.asarray(tr), np.asarray(va)) for tr, va in cv.split(np.empty((n, 1)), groups=groups)]
    except ValueError as err:
        raise BrainattError(f"{who}: cannot split {n} samples with {cv!r}: {err}") from err
    for i, (tr, va) in enumerate(splits):
        if len(va) == 0 or len(tr) < 2:
            raise BrainattError(f"{who}: fold {i} has {len(tr)} train and {len(va)} validation samples")
        if len(tr) + len(va) != n or len(np.union1d(tr, va)) != n:
            raise BrainattError(
                f"{who}: fold {i} of {cv!r} does not use every sample exactly once (train = the samples not in "
                "validation is required); use a KFold/GroupKFold-like splitter"
            )
    return splits


# ------------------------------------------------------------------------------------------------- estimators


class _RidgeBase(RegressorMixin, BaseEstimator):
    """Shared predict for the ridge estimators; ``coef_`` is (n_features, n_targets) as in himalaya."""

    coef_: np.ndarray
    intercept_: np.ndarray | float

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``X @ coef_ + intercept_``, (n_samples, n_targets) (or (n_samples,) for a 1-D fit)."""
        if not hasattr(self, "coef_"):
            raise BrainattError(f"{type(self).__name__}: call fit before predict")
        X = _check_X(X, type(self).__name__, n_features=self.coef_.shape[0])
        return X.astype(self.coef_.dtype) @ self.coef_ + self.intercept_

    def _finish(self, coef: np.ndarray, intercept: np.ndarray, ravel: bool) -> None:
        self.coef_ = coef[:, 0] if ravel else coef
        self.intercept_ = float(intercept[0]) if ravel else intercept
        self.n_features_in_ = coef.shape[0]


class Ridge(_RidgeBase):
    """Ridge regression with a fixed α, for many targets at once.

    Parameters
    ----------
    alpha : float or array of shape (n_targets,)
        Regularisation strength (> 0), one for all targets or one per target.
    fit_intercept : bool
        Center X and Y on their means and fit an intercept (as scikit-learn's ``Ridge``).
    n_targets_batch : int
        Targets processed per chunk (bounds memory; results do not depend on it beyond float rounding).
    dtype : {"float32", "float64"}
        Precision of the products that scale with the number of targets; Gram matrices are always float64.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_targets)
        Coefficients (note: transposed with respect to scikit-learn's ``coef_``, as in himalaya).
    intercept_ : ndarray of shape (n_targets,)
        Intercepts (zeros when ``fit_intercept=False``).
    """

    def __init__(
        self, alpha: float | np.ndarray = 1.0, *, fit_intercept: bool = True, n_targets_batch: int = 1024,
        dtype: str = "float32",
    ) -> None:  # fmt: skip
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.n_targets_batch = n_targets_batch
        self.dtype = dtype

    def fit(self, X: Any, Y: Any) -> Ridge:
        """Fit on X (n_samples, n_features) and Y (n_samples, n_targets) or (n_samples,)."""
        who = "Ridge"
        dtype = _check_dtype(self.dtype, who)
        X = _check_X(X, who)
        Y, ravel = _check_Y(Y, X.shape[0], who)
        alpha = np.asarray(self.alpha, dtype=np.float64)
        if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape != (Y.shape[1],)):
            raise BrainattError(f"{who}: alpha must be a scalar or have shape ({Y.shape[1]},), got {alpha.shape}")
        if not np.isfinite(alpha).all() or (alpha <= 0).any():
            raise BrainattError(f"{who}: alpha must be positive and finite")
        alpha = np.broadcast_to(alpha, (Y.shape[1],))
        Xc, x_mean = _center_X(X, self.fit_intercept)
        basis, _ = _basis(Xc.T @ Xc, dtype)
        X32 = Xc.astype(dtype)
        coef = np.empty((X.shape[1], Y.shape[1]), dtype)
        intercept = np.empty(Y.shape[1])
        for cols, Yc, y_mean in _target_chunks(Y, self.n_targets_batch, dtype, self.fit_intercept, who):
            coef[:, cols] = _refit(basis, X32.T @ Yc, alpha[cols])
            intercept[cols] = y_mean - x_mean @ coef[:, cols].astype(np.float64)
        self._finish(coef, intercept, ravel)
        return self


class RidgeCV(_RidgeBase):
    """Ridge regression with one α per target chosen by K-fold cross-validation, then refit on all samples.

    Parameters
    ----------
    alphas : array of shape (n_alphas,)
        Grid of α values (> 0); a log grid such as ``np.logspace(-2, 10, 13)`` (the default).
    cv : int or splitter
        Number of folds, or a scikit-learn splitter whose folds use every sample (train = not validation).
        An int gives ``KFold(cv)`` without shuffling, or ``GroupKFold(cv)`` when ``groups`` is passed to `fit`, so
        the folds are deterministic.
    fit_intercept : bool
        Center X and Y on train-fold means in each fold (all-sample means for the refit) and fit an intercept.
    n_targets_batch : int
        Targets processed per chunk. Memory is about ``4·n·batch`` bytes plus the p × p fold bases;
        α choices do not depend on it and coefficients only up to float rounding.
    dtype : {"float32", "float64"}
        Precision of the products that scale with the number of targets.

    Attributes
    ----------
    alphas_ : ndarray of shape (n_targets,)
        Selected α per target.
    coef_ : ndarray of shape (n_features, n_targets)
        Coefficients refit on all samples with each target's α.
    intercept_ : ndarray of shape (n_targets,)
        Intercepts.
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
        Mean over folds of the negative validation MSE, float64, rows in the order of the sorted grid.
    best_score_ : ndarray of shape (n_targets,)
        ``cv_scores_`` at the selected α.
    alpha_grid_ : ndarray of shape (n_alphas,)
        The sorted α grid.
    n_at_edge_ : dict
        ``{"lower": n, "upper": m}``: targets whose α is the smallest / largest of the grid. Many at the lower
        edge mean the grid should extend down; targets without signal sit at the upper edge.
    n_splits_ : int
        Number of folds used.

    Notes
    -----
    α is chosen by the mean over folds of −MSE (ties → larger α), himalaya's default criterion, so choices match
    himalaya's ``RidgeCV(fit_intercept=True)`` on the same folds. See the module docstring for the algorithm.
    """

    def __init__(
        self, alphas: np.ndarray = DEFAULT_ALPHAS, *, cv: Any = 5, fit_intercept: bool = True,
        n_targets_batch: int = 1024, dtype: str = "float32",
    ) -> None:  # fmt: skip
        self.alphas = alphas
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.n_targets_batch = n_targets_batch
        self.dtype = dtype

    def fit(self, X: Any, Y: Any, groups: Any = None) -> RidgeCV:
        """Fit on X (n_samples, n_features) and Y (n_samples, n_targets); ``groups`` (n_samples,) keeps groups
        (e.g. sessions, or images with their repeats) inside one fold."""
        who = "RidgeCV"
        dtype = _check_dtype(self.dtype, who)
        X = _check_X(X, who)
        n, p = X.shape
        Y, ravel = _check_Y(Y, n, who)
        alphas = _check_alphas(self.alphas, who)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (n,):
                raise BrainattError(f"{who}: groups must have shape ({n},), got {groups.shape}")
        splits = _splits(self.cv, n, groups, who)
        Xc, x_mean = _center_X(X, self.fit_intercept)
        folds = _prepare_folds(Xc, splits, dtype, self.fit_intercept)
        full, _ = _basis(Xc.T @ Xc, dtype)
        X32 = Xc.astype(dtype)
        # When the validation sets partition the samples, Xᵀ Y is the sum of the validation cross-products.
        partition = sum(f.n_val for f in folds) == n and len(np.unique(np.concatenate([f.val for f in folds]))) == n

        t = Y.shape[1]
        coef = np.empty((p, t), dtype)
        intercept = np.empty(t)
        scores = np.empty((len(alphas), t))
        best = np.empty(t, dtype=np.intp)
        for cols, Yc, y_mean in _target_chunks(Y, self.n_targets_batch, dtype, self.fit_intercept, who):
            val_cross = [f.X_val.T @ Yc[f.val] for f in folds]
            XtY = sum(val_cross[1:], val_cross[0]) if partition else X32.T @ Yc
            s = sum(
                _fold_neg_mse(f, XtY, xv, Yc, alphas, self.fit_intercept)
                for f, xv in zip(folds, val_cross, strict=True)
            )
            scores[:, cols] = s / len(folds)
            best[cols] = np.argmax(scores[:, cols] + _TIE_BREAK * np.log(alphas)[:, None], axis=0)
            coef[:, cols] = _refit(full, XtY, alphas[best[cols]])
            intercept[cols] = y_mean - x_mean @ coef[:, cols].astype(np.float64)

        self.alpha_grid_ = alphas
        self.alphas_ = alphas[best]
        self.cv_scores_ = scores
        self.best_score_ = scores[best, np.arange(t)]
        self.n_at_edge_ = {"lower": int((best == 0).sum()), "upper": int((best == len(alphas) - 1).sum())}
        self.n_splits_ = len(folds)
        log.info(
            "RidgeCV: %d samples, %d features, %d targets, %d folds, %d alphas [%.3g, %.3g]; α at the lower grid "
            "edge for %d targets, at the upper edge for %d",
            n, p, t, len(folds), len(alphas), alphas[0], alphas[-1], self.n_at_edge_["lower"],
            self.n_at_edge_["upper"],
        )  # fmt: skip
        if ravel:
            self.alphas_, self.best_score_ = self.alphas_[0], self.best_score_[0]
        self._finish(coef, intercept, ravel)
        return self
