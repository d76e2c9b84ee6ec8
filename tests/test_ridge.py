"""brainatt.encoding.ridge against scikit-learn's Ridge and a brute-force cross-validation reference."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.linear_model import Ridge as SkRidge
from sklearn.model_selection import GroupKFold, KFold, PredefinedSplit, ShuffleSplit

from brainatt.encoding.ridge import Ridge, RidgeCV, _splits
from brainatt.io import BrainattError

ALPHAS = np.logspace(-2, 6, 9)
# CV scores in float32 carry an α-independent error of about eps32·‖y_val‖² per target (the validation variance no
# α can fit is a difference of two float32 sums); the strongest targets here have R² ≈ 0.99, hence 1e-4.
SCORE_RTOL = {"float32": 1e-4, "float64": 1e-9}


def make_problem(n: int = 150, p: int = 12, t: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with uneven scales and offsets; targets from no signal to strong signal, with offsets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * np.geomspace(3, 0.1, p) + rng.normal(0, 4, p)
    snr = np.geomspace(1e-3, 3, t)
    Y = X @ rng.standard_normal((p, t)) * snr + rng.standard_normal((n, t)) + rng.normal(0, 5, t)
    return X, Y


def brute_force_scores(
    X: np.ndarray, Y: np.ndarray, alphas: np.ndarray, splits: list, center: str = "train"
) -> np.ndarray:
    """Mean over folds of −MSE on the validation fold, one sklearn Ridge per (fold, α).

    ``center="train"`` centers on train-fold means (sklearn's fit_intercept=True); ``"global"`` centers X and Y on
    all-sample means first and fits without an intercept (the leak that train-fold centering avoids).
    """
    if center == "global":
        X, Y = X - X.mean(0), Y - Y.mean(0)
    scores = np.zeros((len(alphas), Y.shape[1]))
    for train, val in splits:
        for i, alpha in enumerate(alphas):
            model = SkRidge(alpha=alpha, fit_intercept=center == "train").fit(X[train], Y[train])
            scores[i] -= ((Y[val] - model.predict(X[val])) ** 2).mean(0) / len(splits)
    return scores


def brute_force_alphas(scores: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    return alphas[np.argmax(scores + 1e-10 * np.log(alphas)[:, None], axis=0)]


@pytest.mark.parametrize("input_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("alpha", [0.01, 3.0, 1e4])
def test_coef_equals_sklearn_ridge(input_dtype: type, alpha: float) -> None:
    X, Y = make_problem()
    X, Y = X.astype(input_dtype), Y.astype(input_dtype)
    ref = SkRidge(alpha=alpha, fit_intercept=True).fit(X.astype(np.float64), Y.astype(np.float64))
    ours = Ridge(alpha).fit(X, Y)
    np.testing.assert_allclose(ours.coef_, ref.coef_.T, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-5, atol=1e-5)
    # RidgeCV with a one-value grid refits exactly that ridge.
    cv = RidgeCV(alphas=[alpha]).fit(X, Y)
    np.testing.assert_allclose(cv.coef_, ref.coef_.T, rtol=0, atol=1e-5)


def test_per_target_alpha_equals_sklearn() -> None:
    X, Y = make_problem(t=5)
    alpha = np.array([0.1, 1.0, 10.0, 100.0, 1000.0])
    ref = SkRidge(alpha=alpha).fit(X, Y)
    np.testing.assert_allclose(Ridge(alpha, dtype="float64").fit(X, Y).coef_, ref.coef_.T, atol=1e-10)
    np.testing.assert_allclose(Ridge(alpha).fit(X, Y).predict(X), ref.predict(X), atol=1e-4)


def test_limits_of_alpha() -> None:
    """α → 0 gives least squares (n > p); α → ∞ shrinks the coefficients to 0."""
    X, Y = make_problem()
    Xc = np.column_stack([X, np.ones(len(X))])
    lstsq = np.linalg.lstsq(Xc, Y, rcond=None)[0][:-1]
    np.testing.assert_allclose(Ridge(1e-8, dtype="float64").fit(X, Y).coef_, lstsq, atol=1e-6)
    assert np.abs(Ridge(1e12).fit(X, Y).coef_).max() < 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_alpha_choices_equal_brute_force(dtype: str) -> None:
    X, Y = make_problem()
    model = RidgeCV(ALPHAS, cv=5, dtype=dtype).fit(X, Y)
    ref = brute_force_scores(X, Y, ALPHAS, list(KFold(5).split(X)))
    assert len(np.unique(model.alphas_)) >= 4, "the problem should spread the choices over the grid"
    np.testing.assert_array_equal(model.alphas_, brute_force_alphas(ref, ALPHAS))
    np.testing.assert_allclose(model.cv_scores_, ref, rtol=SCORE_RTOL[dtype])
    np.testing.assert_allclose(model.best_score_, ref.max(0), rtol=SCORE_RTOL[dtype])
    # The refit is the ridge on all samples at each target's α.
    ref_coef = SkRidge(alpha=model.alphas_).fit(X, Y).coef_.T
    np.testing.assert_allclose(model.coef_, ref_coef, atol=1e-5)


def test_non_partition_splitter_equals_brute_force() -> None:
    """A PredefinedSplit with always-train samples (−1) takes the path where Xᵀ Y is computed directly."""
    X, Y = make_problem()
    fold = np.repeat([-1, 0, 1, 2], [30, 40, 40, 40])
    model = RidgeCV(ALPHAS, cv=PredefinedSplit(fold)).fit(X, Y)
    ref = brute_force_scores(X, Y, ALPHAS, list(PredefinedSplit(fold).split()))
    np.testing.assert_array_equal(model.alphas_, brute_force_alphas(ref, ALPHAS))
    np.testing.assert_allclose(model.cv_scores_, ref, rtol=SCORE_RTOL["float32"])


def test_fewer_validation_rows_than_features() -> None:
    """Validation folds of 8 rows with 12 features: a rank-deficient validation Gram matrix."""
    X, Y = make_problem(n=40)
    model = RidgeCV(ALPHAS, cv=5, dtype="float64").fit(X, Y)
    ref = brute_force_scores(X, Y, ALPHAS, list(KFold(5).split(X)))
    np.testing.assert_array_equal(model.alphas_, brute_force_alphas(ref, ALPHAS))
    np.testing.assert_allclose(model.cv_scores_, ref, rtol=SCORE_RTOL["float64"])


def test_grouped_folds_keep_groups_together() -> None:
    X, Y = make_problem()
    groups = np.arange(len(X)) % 17  # interleaved, so KFold would cut every group
    splits = _splits(5, len(X), groups, "test")
    for train, val in splits:
        assert not set(groups[train]) & set(groups[val])
    model = RidgeCV(ALPHAS, cv=5).fit(X, Y, groups=groups)
    ref = brute_force_scores(X, Y, ALPHAS, list(GroupKFold(5).split(X, groups=groups)))
    np.testing.assert_array_equal(model.alphas_, brute_force_alphas(ref, ALPHAS))
    np.testing.assert_allclose(model.cv_scores_, ref, rtol=SCORE_RTOL["float32"])
    plain = RidgeCV(ALPHAS, cv=5).fit(X, Y)
    assert not np.allclose(plain.cv_scores_, model.cv_scores_, rtol=1e-3)


def test_folds_are_deterministic() -> None:
    X, Y = make_problem()
    a, b = RidgeCV(ALPHAS).fit(X, Y), RidgeCV(ALPHAS).fit(X, Y)
    np.testing.assert_array_equal(a.cv_scores_, b.cv_scores_)
    np.testing.assert_array_equal(a.coef_, b.coef_)


@pytest.mark.parametrize(
    ("dtype", "batches", "tol"),
    [("float64", (1, 8, 37, 1000), 1e-12), ("float32", (8, 16, 37, 1000), 2e-6)],
)
def test_chunk_size_invariance(dtype: str, batches: tuple[int, ...], tol: float) -> None:
    """Chunks change only float rounding (float32: a one-column chunk goes through GEMV instead, so ≥ 8 here)."""
    X, Y = make_problem(t=37)
    fits = [RidgeCV(ALPHAS, n_targets_batch=b, dtype=dtype).fit(X, Y) for b in batches]
    for fit in fits[1:]:
        np.testing.assert_array_equal(fit.alphas_, fits[0].alphas_)
        np.testing.assert_allclose(fit.coef_, fits[0].coef_, rtol=0, atol=tol)
        np.testing.assert_allclose(fit.cv_scores_, fits[0].cv_scores_, rtol=tol)
        assert fit.n_at_edge_ == fits[0].n_at_edge_


def test_constant_shifts_change_nothing() -> None:
    """Adding constants to X columns and Y columns leaves coef, α and CV errors unchanged (float32 compute)."""
    X, Y = make_problem()
    rng = np.random.default_rng(1)
    dx, dy = rng.normal(0, 100, X.shape[1]), rng.normal(0, 100, Y.shape[1])
    a, b = RidgeCV(ALPHAS).fit(X, Y), RidgeCV(ALPHAS).fit(X + dx, Y + dy)
    np.testing.assert_array_equal(a.alphas_, b.alphas_)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.cv_scores_, b.cv_scores_, rtol=SCORE_RTOL["float32"])
    np.testing.assert_allclose(b.predict(X + dx) - dy, a.predict(X), rtol=0, atol=1e-3)


def test_folds_center_on_train_means_only() -> None:
    """With a drift across samples, unshuffled folds have their own means: centering on all-sample means would
    leak the validation fold into the fit and give other scores; ours match train-fold centering."""
    X, Y = make_problem()
    drift = np.linspace(-3, 3, len(X))[:, None]
    X, Y = X + 2 * drift, Y + 5 * drift
    splits = list(KFold(5).split(X))
    train_ref = brute_force_scores(X, Y, ALPHAS, splits, center="train")
    global_ref = brute_force_scores(X, Y, ALPHAS, splits, center="global")
    assert np.abs(train_ref - global_ref).max() > 1e-2 * np.abs(train_ref).max()
    model = RidgeCV(ALPHAS, cv=5).fit(X, Y)
    np.testing.assert_allclose(model.cv_scores_, train_ref, rtol=SCORE_RTOL["float32"])


def test_edge_counts() -> None:
    """Near-noise-free targets pick the smallest α of a grid that starts at strong shrinkage (s² ≈ n = 200);
    constant targets score the same at every α, and ties go to the largest; weak-signal targets land inside."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 10))
    clean = X @ rng.standard_normal((10, 4)) + 0.01 * rng.standard_normal((200, 4))
    constant = np.full((200, 3), 2.5)
    weak = X @ rng.standard_normal((10, 3)) * 0.05 + rng.standard_normal((200, 3))
    grid = np.logspace(1, 7, 13)
    model = RidgeCV(grid).fit(X, np.column_stack([clean, constant, weak]))
    assert (model.alphas_[:4] == grid[0]).all() and (model.alphas_[4:7] == grid[-1]).all()
    assert ((model.alphas_[7:] > grid[0]) & (model.alphas_[7:] < grid[-1])).all()
    assert model.n_at_edge_ == {"lower": 4, "upper": 3}


def test_one_dimensional_target_and_predict() -> None:
    X, Y = make_problem(t=1)
    model = RidgeCV(ALPHAS).fit(X, Y[:, 0])
    assert model.coef_.shape == (X.shape[1],) and np.isscalar(model.alphas_)
    full = RidgeCV(ALPHAS).fit(X, Y)
    np.testing.assert_allclose(model.predict(X), full.predict(X)[:, 0], rtol=1e-5)
    assert -1 < model.score(X, Y[:, 0]) <= 1


def test_targets_read_from_hdf5_in_chunks(tmp_path) -> None:
    X, Y = make_problem(t=20)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["Y"] = Y.astype(np.float32)
    with h5py.File(tmp_path / "y.h5", "r") as f:
        from_disk = RidgeCV(ALPHAS, n_targets_batch=6).fit(X, f["Y"])
    in_memory = RidgeCV(ALPHAS, n_targets_batch=6).fit(X, Y.astype(np.float32))
    np.testing.assert_array_equal(from_disk.coef_, in_memory.coef_)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda X, Y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), Y), "X contains NaN"),
        (lambda X, Y: (X, np.where(np.arange(Y.size).reshape(Y.shape) == 40, np.inf, Y)), "first in target column"),
        (lambda X, Y: (X, Y[:-1]), "X has 150 rows but Y has 149"),
        (lambda X, Y: (X[:, 0], Y), "X must be 2-D"),
        (lambda X, Y: (X, Y[..., None]), "Y must be 1-D or 2-D"),
    ],
)
def test_bad_input_is_a_clear_error(make, message: str) -> None:
    X, Y = make(*make_problem())
    with pytest.raises(BrainattError, match=message):
        RidgeCV(ALPHAS).fit(X, Y)


def test_bad_settings_are_clear_errors() -> None:
    X, Y = make_problem()
    with pytest.raises(BrainattError, match="alphas must be"):
        RidgeCV([1.0, -1.0]).fit(X, Y)
    with pytest.raises(BrainattError, match="exactly once"):
        RidgeCV(ALPHAS, cv=ShuffleSplit(3, test_size=0.2, train_size=0.5, random_state=0)).fit(X, Y)
    with pytest.raises(BrainattError, match="groups must have shape"):
        RidgeCV(ALPHAS).fit(X, Y, groups=np.zeros(3))
    with pytest.raises(BrainattError, match="cannot split"):
        RidgeCV(ALPHAS, cv=5).fit(X, Y, groups=np.arange(len(X)) % 3)
    with pytest.raises(BrainattError, match="alpha must be a scalar or have shape"):
        Ridge(np.ones(3)).fit(X, Y)
    with pytest.raises(BrainattError, match="features but the model was fitted on"):
        Ridge().fit(X, Y).predict(X[:, :3])
