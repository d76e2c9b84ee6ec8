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
  eigendecomposed, ``V diag(s²) Vᵀ``; then ``coef(α) = V diag(1 / (s² + α)) z`` with ``z = Vᵀ Xᵀ y``. Train-fold
  cross-products are all-sample ones minus validation ones, so no train-fold copy of Y is made. The products that
  scale with t use the whitened features U of the all-sample SVD ``X = U diag(s) Vᵀ`` (see `_Whitened`), which
  keeps float32 coefficients as accurate as an SVD solver's.
- **Validation error without predictions.** For a validation block (Xv, Yv centered with the train-fold means),
  write ``G = Vᵀ Xvᵀ Xv V = Fᵀ F`` and ``g = F⁻ᵀ Vᵀ Xvᵀ yv`` (the coordinates of yv in the column space of Xv V).
  With ``e = 1 / (s² + α)`` the squared error of a target is ``(‖yv‖² − ‖g‖²) + ‖g − F diag(e) z‖²``: the first
  term no α can change, the second is a residual of length r = rank G ≤ min(n_val, p). Per α this costs r·k·t
  instead of n_val·k·t for forming predictions, and never materialises an (a, n_val, t) array.
  ``bench/ridge.py`` (bench/RESULTS.md, "## ridge") measures it against himalaya's hat-matrix path.
- **Precision.** p × p work (Gram matrices, eigendecompositions) is float64; the products that scale with t
  run in the compute ``dtype`` (float32 by default); per-fold errors are combined and averaged over folds in
  float64. The α-dependent part of each error is a direct residual, so its float32 error scales with the residual;
  the α-independent part carries about eps32·‖yv‖² (it shifts a target's scores, not its choice).
- **Memory.** Targets are processed in chunks of ``n_targets_batch`` columns; ``Y`` is read one chunk at a time
  (a numpy array, a memmap or an h5py dataset all work), so the working set is O(n · batch + p² · folds).
- **Refit.** Each target's coefficients are ``V diag(s / (s² + α_j)) Uᵀ y_j`` (all-sample SVD): scaling the
  columns of ``Uᵀ Y`` by their own filter makes the refit of all targets, whatever their α, one matrix product, which
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
import scipy.linalg
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


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD float64 matrix with eigenvalues above p·eps·max (its numerical rank)."""
    w, v = np.linalg.eigh(a)
    keep = w > max(w[-1], 0.0) * a.shape[0] * np.finfo(np.float64).eps
    return w[keep], v[:, keep]


@dataclass(frozen=True)
class _Whitened:
    """All-sample SVD of the centered X, ``Xc = U diag(s) Vᵀ``, from the float64 eigendecomposition of ``XcᵀXc``.

    Products that scale with the number of targets use U (orthonormal columns) in place of X: in float32, ``UᵀY`` is
    off by about eps·‖Y‖ where ``XᵀY`` would be off by eps·‖X‖·‖Y‖, so the coefficients
    ``V diag(s / (s² + α)) UᵀY`` keep the accuracy of an SVD solver rather than that of the normal equations.
    """

    U: np.ndarray  # (n, k) compute dtype
    V: np.ndarray  # (p, k) compute dtype
    V64: np.ndarray  # (p, k) float64
    s: np.ndarray  # (k,) float64 singular values, > 0


def _val_factor(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(F, F⁻ᵀ)`` with ``FᵀF = G`` for a PSD float64 G, F⁻ᵀ restricted to G's numerical range.

    The Cholesky factor when G is numerically positive definite (at p = 768: 0.1 s where ``eigh`` took 2–3 s on the
    loaded 2-core bench machine, once per fold); otherwise (e.g. fewer validation rows than features) from the
    eigendecomposition truncated to the numerical rank, F of shape (rank, k).
    """
    try:
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        L = None
    d = np.diag(L) ** 2 if L is not None else None
    if d is not None and d.min() > d.max() * len(G) * np.finfo(np.float64).eps:
        return np.ascontiguousarray(L.T), scipy.linalg.solve_triangular(L, np.eye(len(G)), lower=True)
    lam, q = _psd_eigh(G)
    return np.ascontiguousarray((q * np.sqrt(lam)).T), (q / np.sqrt(lam)).T


def _whiten(Xc: np.ndarray, dtype: np.dtype) -> _Whitened:
    s2, v = _psd_eigh(Xc.T @ Xc)
    s = np.sqrt(s2)
    return _Whitened(U=((Xc @ v) / s).astype(dtype), V=v.astype(dtype), V64=v, s=s)


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


def _refit(w: _Whitened, UtY: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Ridge coefficients (p, t) for per-target ``alpha`` (t,) from ``UtY = UᵀYc`` (k, t).

    Scaling column j by its own filter ``s / (s² + α_j)`` refits every target, whatever its α, in one product.
    """
    shrink = w.s[:, None] / (w.s[:, None] ** 2 + alpha[None, :])
    return w.V @ (UtY * shrink.astype(UtY.dtype))


@dataclass(frozen=True)
class _Fold:
    """What one CV fold needs for every target chunk, in the coordinates of `_Whitened` (U space).

    The train fold's own eigenbasis ``X_trcᵀ X_trc = V_f diag(s2) V_fᵀ`` is reached from U-space cross-products by
    ``project = V_fᵀ V diag(s)``, since ``Xᵀ Y = V diag(s) Uᵀ Y`` for any rows.
    """

    val: np.ndarray  # validation row indices
    U_val: np.ndarray  # (n_val, k) rows of U, compute dtype
    u_mean_train: np.ndarray  # (k,) float64 train-fold means of U (zeros without an intercept)
    u_sum_val: np.ndarray  # (k,) float64 column sums of U_val
    s2: np.ndarray  # (k_f,) float64 eigenvalues of the train-fold-centered train Gram matrix
    project: np.ndarray  # (k_f, k) V_fᵀ V diag(s), compute dtype
    factor: np.ndarray  # (r, k_f) F with FᵀF = G = V_fᵀ Xvᵀ Xv V_f, Xv centered with the train-fold means
    project_val: np.ndarray  # (r, k) F⁻ᵀ V_fᵀ V diag(s): U-space validation cross-products → g = Wᵀ Yv

    @property
    def n_val(self) -> int:
        return len(self.val)


def _prepare_folds(
    Xc: np.ndarray, w: _Whitened, splits: list[tuple[np.ndarray, np.ndarray]], dtype: np.dtype, fit_intercept: bool
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
        s2, v = _psd_eigh(gram - gv_raw - n_train * np.outer(m, m))
        # Validation Gram with the validation rows centered on the train-fold means, in the train eigenbasis.
        gv = gv_raw - np.outer(m, sv) - np.outer(sv, m) + n_val * np.outer(m, m)
        factor, factor_inv_t = _val_factor(v.T @ gv @ v)
        project = (v.T @ w.V64) * w.s
        folds.append(
            _Fold(
                val=val,
                U_val=w.U[val],
                u_mean_train=(w.V64.T @ m) / w.s,
                u_sum_val=(w.V64.T @ sv) / w.s,
                s2=s2,
                project=project.astype(dtype),
                factor=factor.astype(dtype),
                project_val=(factor_inv_t @ project).astype(dtype),
            )
        )
    return folds


def _fold_neg_mse(
    fold: _Fold, UtY: np.ndarray, UvtYv: np.ndarray, Yc: np.ndarray, alphas: np.ndarray, fit_intercept: bool
) -> np.ndarray:
    """(n_alphas, t) float64 negative validation MSE of one fold for every α, for one target chunk.

    ``UtY`` (k, t) is the all-sample U-space cross-product ``UᵀYc`` and ``UvtYv`` the validation rows' one;
    ``Yc`` is the all-sample-centered chunk.
    """
    n_val, n_train = fold.n_val, len(Yc) - fold.n_val
    m = fold.u_mean_train
    Yv = Yc[fold.val]
    sy_v = Yv.sum(0, dtype=np.float64)
    my = (Yc.sum(0, dtype=np.float64) - sy_v) / n_train if fit_intercept else np.zeros_like(sy_v)
    dt = Yc.dtype
    # Train-fold-centered train cross-product and validation cross-product (train-fold means), as rank-one updates.
    A = UtY - UvtYv
    A -= np.outer(n_train * m, my).astype(dt)
    Bm = UvtYv - np.outer(m, sy_v - n_val * my).astype(dt)
    Bm -= np.outer(fold.u_sum_val, my).astype(dt)
    Z = fold.project @ A  # (k_f, t) = V_fᵀ X_trcᵀ Y_trc
    g = fold.project_val @ Bm  # (r, t) = F⁻ᵀ V_fᵀ Xvᵀ Yv (validation rows centered with train-fold means)
    E = 1.0 / (fold.s2[:, None] + alphas[None, :])  # (k_f, a) float64 spectral filters
    # Residuals in the validation column space for every α at once, g − F diag(e) z_j: one (r, k) @ (k, a·t)
    # product (measured on the 2-core bench machine: 0.37 s against 0.79 s for np.matmul stacked over α, at
    # k = 768, 1024 targets, 13 α). Solver as a whole against himalaya: bench/ridge.py.
    M = fold.factor @ (Z[:, None, :] * E.astype(dt)[:, :, None]).reshape(len(Z), -1)
    M = np.subtract(g[:, None, :], M.reshape(len(g), len(alphas), -1), out=M.reshape(len(g), len(alphas), -1))
    in_space = np.einsum("rat,rat->at", M, M).astype(np.float64)
    yy = np.einsum("ij,ij->j", Yv, Yv).astype(np.float64) - 2 * my * sy_v + n_val * my**2  # ‖Yv − my‖²
    outside = yy - np.einsum("ij,ij->j", g, g).astype(np.float64)  # the part no α can fit
    return -(outside + in_space) / n_val


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
        w = _whiten(Xc, dtype)
        coef = np.empty((X.shape[1], Y.shape[1]), dtype)
        intercept = np.empty(Y.shape[1])
        for cols, Yc, y_mean in _target_chunks(Y, self.n_targets_batch, dtype, self.fit_intercept, who):
            coef[:, cols] = _refit(w, w.U.T @ Yc, alpha[cols])
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
        w = _whiten(Xc, dtype)
        folds = _prepare_folds(Xc, w, splits, dtype, self.fit_intercept)
        # When the validation sets partition the samples, Uᵀ Y is the sum of the validation cross-products.
        partition = sum(f.n_val for f in folds) == n and len(np.unique(np.concatenate([f.val for f in folds]))) == n

        t = Y.shape[1]
        coef = np.empty((p, t), dtype)
        intercept = np.empty(t)
        scores = np.empty((len(alphas), t))
        best = np.empty(t, dtype=np.intp)
        for cols, Yc, y_mean in _target_chunks(Y, self.n_targets_batch, dtype, self.fit_intercept, who):
            val_cross = [f.U_val.T @ Yc[f.val] for f in folds]
            UtY = sum(val_cross[1:], val_cross[0]) if partition else w.U.T @ Yc
            s = sum(
                _fold_neg_mse(f, UtY, xv, Yc, alphas, self.fit_intercept)
                for f, xv in zip(folds, val_cross, strict=True)
            )
            scores[:, cols] = s / len(folds)
            best[cols] = np.argmax(scores[:, cols] + _TIE_BREAK * np.log(alphas)[:, None], axis=0)
            coef[:, cols] = _refit(w, UtY, alphas[best[cols]])
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
