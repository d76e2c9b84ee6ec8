"""Metrics: the one implementation every stage uses (DESIGN.md, "Metrics"): correlations, R², noise ceilings."""

from __future__ import annotations

import numpy as np


def inverse_mean_repeats(n_reps: np.ndarray) -> float:
    """Mean of 1/n over images: NSD's mixed-repeat form (A/3 + B/2 + C/1)/(A + B + C)."""
    n = np.asarray(n_reps, dtype=np.float64)
    n = n[n > 0]
    if not len(n):
        raise ValueError("no image has a repeat count > 0")
    return float(np.mean(1.0 / n))


def noise_ceiling(ncsnr: np.ndarray, n_reps: np.ndarray) -> np.ndarray:
    """Noise ceiling in % of variance: NC = 100·ncsnr² / (ncsnr² + mean(1/n)) for responses averaged over n trials."""
    snr2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    return 100.0 * snr2 / (snr2 + inverse_mean_repeats(n_reps))


def add_repeats(sums: np.ndarray, sumsq: np.ndarray, z: np.ndarray, rows: np.ndarray) -> None:
    """Add each trial of ``z`` ``(trials, V)`` to its image's row (``rows``) of ``sums`` and ``sumsq``, in place: the
    running inputs of `ncsnr_from_repeats`, one session at a time. A row loop beats ``np.add.at`` by ~50× here."""
    for t, r in enumerate(rows):
        sums[r] += z[t]
        sumsq[r] += z[t] ** 2


def ncsnr_from_repeats(sums: np.ndarray, sumsq: np.ndarray, counts: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """NSD's ncsnr from per-image sums over repeated trials of z-scored betas.

    ``sums`` and ``sumsq`` are ``(n_images, V)`` sums of z and z² over each image's trials, ``counts`` the
    trials per image. σ²_noise is the mean across images (with ≥ 2 trials) of the unbiased across-repeat variance,
    σ_signal = √max(0, 1 − σ²_noise) and ncsnr = σ_signal / σ_noise. Computed ``chunk`` voxels at a time: at NSD's
    size (10,000 images × 15,724 voxels) whole-array float64 temporaries would take ~5 GB.
    """
    keep = counts >= 2
    if not keep.any():
        raise ValueError("no image was shown twice: ncsnr cannot be estimated from repeats")
    n = counts[keep].astype(np.float64)[:, None]
    noise_var = np.empty(sums.shape[1])
    for v in range(0, sums.shape[1], chunk):  # float64 temporaries of (images × chunk), not (images × V)
        s = sums[keep, v : v + chunk].astype(np.float64)
        var = (sumsq[keep, v : v + chunk].astype(np.float64) - s**2 / n) / (n - 1)
        noise_var[v : v + chunk] = np.clip(var.mean(0), 1e-12, None)
    return np.sqrt(np.clip(1.0 - noise_var, 0.0, None)) / np.sqrt(noise_var)


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (voxel), vectorised; constant columns give 0."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.divide((a * b).sum(0), denom, out=np.zeros(a.shape[1]), where=denom > 0)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, 1 − SS_res/SS_tot (constant columns give 0)."""
    a = np.asarray(y_true, dtype=np.float64)
    ss_res = ((a - np.asarray(y_pred, dtype=np.float64)) ** 2).sum(0)
    ss_tot = ((a - a.mean(0)) ** 2).sum(0)
    return np.divide(ss_tot - ss_res, ss_tot, out=np.zeros(a.shape[1]), where=ss_tot > 0)


def nc_normalized(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Noise-ceiling-normalised accuracy max(r, 0)² / (NC/100); NaN where the ceiling is 0."""
    ceiling = np.asarray(nc, dtype=np.float64) / 100
    return np.divide(np.maximum(r, 0) ** 2, ceiling, out=np.full(len(ceiling), np.nan), where=ceiling > 0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_top1(
    pred: np.ndarray, true: np.ndarray, way: int = 300, repeats: int = 30, seed: int = 0
) -> tuple[float, float]:
    """Top-1 retrieval by cosine over ``min(way, N)``-way random subsets, averaged over ``repeats`` subsets.

    Returns (image retrieval: each prediction finds its true embedding among the subset's, brain retrieval: each
    true embedding finds its prediction); chance is 1/way. Rows are flattened.
    """
    p, t = _unit_rows(pred), _unit_rows(true)
    n = len(p)
    way = min(way, n)
    rng = np.random.default_rng(seed)
    forward, backward = [], []
    for _ in range(repeats):
        idx = rng.choice(n, way, replace=False)
        sim = p[idx] @ t[idx].T
        forward.append(np.mean(sim.argmax(1) == np.arange(way)))
        backward.append(np.mean(sim.argmax(0) == np.arange(way)))
    return float(np.mean(forward)), float(np.mean(backward))


def two_way_identification(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of pairs (i, j≠i) where corr(pred_i, true_i) > corr(pred_i, true_j); chance 0.5. Rows are flattened."""
    p = np.asarray(pred, np.float64).reshape(len(pred), -1)
    t = np.asarray(true, np.float64).reshape(len(true), -1)
    p = _unit_rows(p - p.mean(1, keepdims=True))
    t = _unit_rows(t - t.mean(1, keepdims=True))
    r = p @ t.T
    n = len(r)
    if n < 2:
        raise ValueError("two-way identification needs at least 2 items")
    return float(((r < np.diag(r)[:, None]).sum(1) / (n - 1)).mean())


def pixel_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of images' flattened pixels: (N, ...) × (N, ...) → (N,)."""
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    return (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """SSIM of each pair of grey images in [0, 1] (N, H, W), Gaussian window σ ``sigma`` (the MindEye protocol)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01**2, 0.03**2
    out = []
    for x, y in zip(np.asarray(a, np.float64), np.asarray(b, np.float64), strict=True):

        def blur(v: np.ndarray) -> np.ndarray:
            return gaussian_filter(v, sigma, truncate=3.5)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        out.append(s.mean())
    return np.array(out)
