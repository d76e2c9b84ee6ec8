"""BrainSCUBA projection: the softmax-weighted candidate average, its limits, invariances and the streaming."""

from __future__ import annotations

import numpy as np
import pytest

from brainatt.io import BrainattError
from brainatt.scuba.projection import disjoint_subsets, project, project_stream, subset_labels, unit_candidates


@pytest.fixture
def candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, 16)).astype(np.float32) * rng.uniform(0.5, 3.0, (500, 1)).astype(np.float32)
    dirs, norms = unit_candidates(raw)
    return raw, dirs, norms


def _dense(w: np.ndarray, dirs: np.ndarray, norms: np.ndarray, beta: float) -> np.ndarray:
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    logits = beta * wn.astype(np.float64) @ dirs.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p @ dirs
    return (p @ norms)[:, None] * d / np.linalg.norm(d, axis=1, keepdims=True)


def test_large_beta_returns_the_nearest_candidate_with_its_norm(candidates) -> None:
    raw, dirs, norms = candidates
    w = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    nearest = np.argmax(w @ dirs.T / np.linalg.norm(w, axis=1, keepdims=True), axis=1)
    out = project(w, dirs, norms, beta=1e5)
    np.testing.assert_allclose(out, raw[nearest], rtol=1e-4, atol=1e-4)


def test_small_beta_returns_the_mean_direction_and_mean_norm(candidates) -> None:
    _, dirs, norms = candidates
    w = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
    out = project(w, dirs, norms, beta=1e-7)
    mean = dirs.mean(0)
    expected = norms.mean() * mean / np.linalg.norm(mean)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-4, atol=1e-4)


def test_invariant_to_weight_scale_and_norm_within_candidate_range(candidates) -> None:
    _, dirs, norms = candidates
    w = np.random.default_rng(3).normal(size=(20, 16)).astype(np.float32)
    a = project(w, dirs, norms, beta=150)
    b = project(w * np.linspace(0.01, 100, 20, dtype=np.float32)[:, None], dirs, norms, beta=150)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    n = np.linalg.norm(a, axis=1)
    assert (n >= norms.min() - 1e-5).all() and (n <= norms.max() + 1e-5).all()


@pytest.mark.parametrize("beta", [1.0, 20.0, 150.0])
def test_chunked_streaming_equals_the_dense_softmax(candidates, beta: float) -> None:
    _, dirs, norms = candidates
    w = np.random.default_rng(4).normal(size=(30, 16)).astype(np.float32)
    dense = _dense(w, dirs, norms, beta)
    chunked = project(w, dirs, norms, beta=beta, chunk=37, voxel_batch=8)
    np.testing.assert_allclose(chunked, dense, atol=1e-4)  # float32 cosines times β
    np.testing.assert_allclose(project(w, dirs, norms, beta=beta, chunk=37, top_k=len(dirs)), chunked, atol=1e-5)


def test_top_k_keeps_only_the_k_nearest(candidates) -> None:
    _, dirs, norms = candidates
    w = np.random.default_rng(5).normal(size=(4, 16)).astype(np.float32)
    sims = w @ dirs.T
    for v in range(len(w)):
        keep = np.argsort(-sims[v])[:10]
        expected = _dense(w[v : v + 1], dirs[keep], norms[keep], 5.0)
        got = project(w[v : v + 1], dirs, norms, beta=5.0, chunk=64, top_k=10)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_zero_and_nan_candidates_are_refused_with_a_count() -> None:
    raw = np.ones((5, 4), np.float32)
    raw[1] = 0
    raw[3, 2] = np.nan
    with pytest.raises(BrainattError, match="2 of 5"):
        unit_candidates(raw, "cand.h5")


def test_repeat_subsets_are_disjoint_and_equal() -> None:
    subsets = disjoint_subsets(103, 5, seed=0)
    assert [len(s) for s in subsets] == [20] * 5
    assert len(np.unique(np.concatenate(subsets))) == 100


@pytest.mark.parametrize("top_k", [None, 7])
def test_repeats_projected_in_one_pass_equal_separate_projections(candidates, top_k: int | None) -> None:
    _, dirs, norms = candidates
    w = np.random.default_rng(6).normal(size=(9, 16)).astype(np.float32)
    labels = subset_labels(len(dirs), 3, seed=2)

    def chunks():
        for c0 in range(0, len(dirs), 64):
            yield dirs[c0 : c0 + 64], norms[c0 : c0 + 64], labels[c0 : c0 + 64]

    out = project_stream(w, chunks, repeats=3, beta=30.0, voxel_batch=4, top_k=top_k)
    for k in range(3):
        rows = labels == k
        np.testing.assert_allclose(out[k], project(w, dirs[rows], norms[rows], beta=30.0, top_k=top_k), atol=1e-5)
