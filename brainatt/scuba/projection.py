"""Projection of voxel weights onto the manifold of natural-image CLIP embeddings (BrainSCUBA).

For voxel v with weight row w_v and candidates e_j (raw CLIP image embeddings, n_j = ‖e_j‖, ê_j = e_j/n_j):
p_vj = softmax_j(β · cos(w_v, ê_j)), d_v = Σ_j p_vj ê_j, r_v = Σ_j p_vj n_j, and the projection is r_v · d_v/‖d_v‖.
Direction and norm are averaged separately, so the projection has the scale of a real image embedding (what a
captioner trained on raw embeddings expects).

Candidates are streamed in chunks with a running log-sum-exp (flash-attention style rescaling), so memory is
O(voxels × dim + voxels × chunk), never voxels × candidates. With ``top_k`` only the k most similar candidates of
each voxel enter the softmax (at β = 150 the weights beyond a few thousand are negligible).
"""

from __future__ import annotations

import numpy as np
import torch

from brainatt.io import BrainattError

BETA = 150.0


def unit_candidates(embeddings: np.ndarray, where: str = "candidate embeddings") -> tuple[np.ndarray, np.ndarray]:
    """Unit directions and norms of raw candidate embeddings ``(N, D)``.

    Rows that are zero or non-finite (images that failed to load) are refused with their count: drop them from
    the candidate file first.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or not len(e):
        raise BrainattError(f"{where}: expected a non-empty (N, D) array, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    bad = ~np.isfinite(norms) | (norms <= 0)
    if bad.any():
        raise BrainattError(
            f"{where}: {int(bad.sum())} of {len(e)} embeddings are zero or not finite: remove those images "
            "(failed loads) from the candidate set and re-embed"
        )
    return e / norms[:, None], norms


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    norm = w.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(norm).all()) or bool((norm <= 0).any()):
        raise BrainattError("voxel weights: a row is zero or not finite; drop those voxels before projecting")
    return w / norm


@torch.no_grad()
def project(
    weights: np.ndarray,
    directions: np.ndarray,
    norms: np.ndarray,
    beta: float = BETA,
    chunk: int = 65536,
    voxel_batch: int = 4096,
    top_k: int | None = None,
) -> np.ndarray:
    """Project voxel weights ``(V, D)`` onto candidates (unit ``directions (N, D)``, ``norms (N,)``) → ``(V, D)``.

    The result is invariant to rescaling each w_v; its norm lies within [min n_j, max n_j]. ``chunk`` candidates
    and ``voxel_batch`` voxels are held at a time; ``top_k`` restricts each voxel's softmax to its k nearest
    candidates (exact when k ≥ N).
    """
    w_all = _unit_rows(torch.as_tensor(np.asarray(weights, np.float32)))
    dirs = torch.as_tensor(np.asarray(directions, np.float32))
    nrm = torch.as_tensor(np.asarray(norms, np.float32))
    if dirs.ndim != 2 or dirs.shape[1] != w_all.shape[1] or nrm.shape != (len(dirs),):
        raise BrainattError(
            f"projection: weights {tuple(w_all.shape)}, directions {tuple(dirs.shape)} and norms {tuple(nrm.shape)} "
            "do not match: the encoder and the candidates must come from the same CLIP model"
        )
    out = np.empty(w_all.shape, np.float32)
    for v0 in range(0, len(w_all), voxel_batch):
        w = w_all[v0 : v0 + voxel_batch]
        out[v0 : v0 + len(w)] = (
            _project_top_k(w, dirs, nrm, beta, chunk, top_k) if top_k else _project_stream(w, dirs, nrm, beta, chunk)
        ).numpy()
    return out


def _finish(d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return r[:, None] * d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _project_stream(
    w: torch.Tensor, dirs: torch.Tensor, nrm: torch.Tensor, beta: float, chunk: int, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax over all candidates (or, with ``floor``, those at least that similar), streamed with a running
    maximum; sums across chunks are kept in float64."""
    m = torch.full((len(w),), -torch.inf, dtype=torch.float64)
    z = torch.zeros(len(w), dtype=torch.float64)
    d = torch.zeros(w.shape, dtype=torch.float64)
    r = torch.zeros(len(w), dtype=torch.float64)
    for c0 in range(0, len(dirs), chunk):
        e = dirs[c0 : c0 + chunk]
        s = w @ e.T
        logits = beta * s
        if floor is not None:
            logits = logits.masked_fill(s < floor[:, None], -torch.inf)
        m_new = torch.maximum(m, logits.max(1).values.double())
        scale = torch.exp(m - m_new).nan_to_num(0.0)
        p = torch.exp(logits - m_new[:, None].float()).nan_to_num(0.0)  # in [0, 1]: float32 suffices per chunk
        z = z * scale + p.sum(1, dtype=torch.float64)
        d = d * scale[:, None] + (p @ e).double()
        r = r * scale + (p @ nrm[c0 : c0 + chunk]).double()
        m = m_new
    return _finish(d / z[:, None], r / z).float()


def _project_top_k(
    w: torch.Tensor, dirs: torch.Tensor, nrm: torch.Tensor, beta: float, chunk: int, k: int
) -> torch.Tensor:
    """Softmax over each voxel's ``k`` most similar candidates: one pass finds each voxel's k-th similarity, a
    second streams the softmax over the candidates at or above it."""
    best = torch.full((len(w), 0), -torch.inf)
    for c0 in range(0, len(dirs), chunk):
        s = torch.cat([best, w @ dirs[c0 : c0 + chunk].T], 1)
        best = s.topk(min(k, s.shape[1]), dim=1).values
    return _project_stream(w, dirs, nrm, beta, chunk, floor=best[:, -1])


def disjoint_subsets(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint, equal-sized random subsets of ``n`` candidate indices (the repeats), each sorted."""
    if k < 1 or n < k:
        raise BrainattError(f"scuba.repeats must be between 1 and the number of candidates ({n}), got {k}")
    order = np.random.default_rng(seed).permutation(n)
    size = n // k
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(k)]
