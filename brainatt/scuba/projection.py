"""Projection of voxel weights onto the manifold of natural-image CLIP embeddings (BrainSCUBA).

For voxel v with weight row w_v and candidates e_j (raw CLIP image embeddings, n_j = ‖e_j‖, ê_j = e_j/n_j):
p_vj = softmax_j(β · cos(w_v, ê_j)), d_v = Σ_j p_vj ê_j, r_v = Σ_j p_vj n_j, and the projection is r_v · d_v/‖d_v‖.
Direction and norm are averaged separately, so the projection has the scale of a real image embedding (what a
captioner trained on raw embeddings expects).

Candidates are streamed in chunks (from the candidate file, never all in memory) with a running log-sum-exp
(flash-attention style rescaling), so memory is O(voxels × dim + chunk × dim + voxel_batch × TILE), never
voxels × candidates; all repeats are projected in one pass over the candidates. Each block costs two float32
GEMMs (logits, then the weighted sum of directions) and a few in-place passes, so the projection runs close to
GEMM speed. With ``top_k`` only the k most similar candidates of
each voxel enter the softmax (at β = 150 the weights beyond a few thousand are negligible).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

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


# One block of the streamed softmax: ``voxel_batch`` voxels × ``TILE`` candidates of float32 logits (64 MB at the
# defaults): one GEMM fills it, the exponential is taken in place, a second GEMM reads it.
TILE = 8192
VOXEL_BATCH = 2048


class StreamingSoftmax:
    """Softmax-weighted candidate direction and norm of every voxel, candidates added a chunk at a time.

    Per voxel it keeps the running maximum logit m, Σ exp(l − m), Σ exp(l − m)·ê and Σ exp(l − m)·n in float64
    and rescales them when m grows (flash-attention style), so the result equals the dense softmax.
    ``floor`` (logits, per voxel): candidates below it are left out (top-k).
    """

    def __init__(
        self, weights: torch.Tensor, beta: float, voxel_batch: int = VOXEL_BATCH, buf: torch.Tensor | None = None
    ) -> None:
        self.w = beta * _unit_rows(weights)  # logits come straight out of the GEMM
        v, dim = self.w.shape
        self.voxel_batch = voxel_batch
        self.m = torch.full((v,), -torch.inf, dtype=torch.float64)
        self.z = torch.zeros(v, dtype=torch.float64)
        self.r = torch.zeros(v, dtype=torch.float64)
        self.d = torch.zeros((v, dim), dtype=torch.float64)
        self.buf = torch.empty(min(voxel_batch, v) * TILE) if buf is None else buf  # may be shared

    def add(self, dirs: torch.Tensor, norms: torch.Tensor, floor: torch.Tensor | None = None) -> None:
        """Add unit candidate directions ``(c, D)`` with their norms ``(c,)``."""
        for c0 in range(0, len(dirs), TILE):
            e, n = dirs[c0 : c0 + TILE], norms[c0 : c0 + TILE]
            for v0 in range(0, len(self.w), self.voxel_batch):
                v1 = min(v0 + self.voxel_batch, len(self.w))
                self._block(slice(v0, v1), e, n, None if floor is None else floor[v0:v1])

    def _block(self, v: slice, e: torch.Tensor, n: torch.Tensor, floor: torch.Tensor | None) -> None:
        w = self.w[v]
        logits = torch.mm(w, e.T, out=self.buf[: len(w) * len(e)].view(len(w), len(e)))
        if floor is not None:
            logits.masked_fill_(logits < floor[:, None], -torch.inf)
        m_old = self.m[v]
        m_new = torch.maximum(m_old, logits.amax(1).double())
        ref = torch.where(torch.isinf(m_new), 0.0, m_new)  # a voxel with nothing above its floor yet
        p = logits.sub_(ref.float()[:, None]).exp_()  # in place, in [0, 1]: float32 suffices within a block
        scale = torch.exp(m_old - ref)
        self.z[v] = self.z[v] * scale + p.sum(1).double()
        self.r[v] = self.r[v] * scale + torch.mv(p, n).double()
        self.d[v] = self.d[v] * scale[:, None] + torch.mm(p, e).double()
        self.m[v] = m_new

    def result(self) -> torch.Tensor:
        """``(V, D)`` float32: norm r_v along direction d_v."""
        return _finish(self.d / self.z[:, None], self.r / self.z).float()


# (unit directions (c, D), norms (c,), repeat of each candidate (c,), −1: none) for one chunk of candidates
CandidateChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@torch.no_grad()
def project_stream(
    weights: np.ndarray,
    chunks: CandidateChunks,
    repeats: int = 1,
    beta: float = BETA,
    voxel_batch: int = VOXEL_BATCH,
    top_k: int | None = None,
) -> np.ndarray:
    """Project voxel weights ``(V, D)`` onto every repeat's candidates at once → ``(repeats, V, D)``.

    ``chunks()`` streams the candidates (called twice with ``top_k``: once to find each voxel's k-th nearest
    candidate, once for the softmax), so they are never all in memory. The result is invariant to rescaling
    each w_v; its norm lies within [min n_j, max n_j] of the repeat's candidates.
    """
    w = torch.as_tensor(np.asarray(weights, np.float32))
    buf = torch.empty(min(voxel_batch, len(w)) * TILE)  # the repeats take turns with one block buffer
    accs = [StreamingSoftmax(w, beta, voxel_batch, buf) for _ in range(repeats)]
    floors = _top_k_floors(accs, chunks, repeats, top_k) if top_k else [None] * repeats
    for dirs, norms, labels in chunks():
        dirs_t, norms_t = _check_chunk(dirs, norms, w.shape[1])
        for k, acc in enumerate(accs):
            rows = torch.as_tensor(np.flatnonzero(labels == k))
            if len(rows) == len(dirs_t):
                acc.add(dirs_t, norms_t, floors[k])
            elif len(rows):
                acc.add(dirs_t[rows], norms_t[rows], floors[k])
    if any(bool((acc.z == 0).any()) for acc in accs):
        raise BrainattError("projection: a repeat received no candidates: use fewer repeats or more candidates")
    return torch.stack([acc.result() for acc in accs]).numpy()


def _check_chunk(dirs: np.ndarray, norms: np.ndarray, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.as_tensor(np.asarray(dirs, np.float32))
    n = torch.as_tensor(np.asarray(norms, np.float32))
    if d.ndim != 2 or d.shape[1] != dim or n.shape != (len(d),):
        raise BrainattError(
            f"projection: weights of dimension {dim}, candidate directions {tuple(d.shape)} and norms "
            f"{tuple(n.shape)} do not match: the encoder and the candidates must come from the same CLIP model"
        )
    return d, n


def _top_k_floors(accs: list[StreamingSoftmax], chunks: CandidateChunks, repeats: int, k: int) -> list[torch.Tensor]:
    """Each repeat's k-th largest logit per voxel (one streaming pass)."""
    best = [torch.full((len(acc.w), 0), -torch.inf) for acc in accs]
    for dirs, norms, labels in chunks():
        dirs_t, _ = _check_chunk(dirs, norms, accs[0].w.shape[1])
        for j in range(repeats):
            rows = torch.as_tensor(np.flatnonzero(labels == j))
            for c0 in range(0, len(rows), TILE):
                s = torch.cat([best[j], accs[j].w @ dirs_t[rows[c0 : c0 + TILE]].T], 1)
                best[j] = s.topk(min(k, s.shape[1]), dim=1).values
    return [b[:, -1] for b in best]


def project(
    weights: np.ndarray,
    directions: np.ndarray,
    norms: np.ndarray,
    beta: float = BETA,
    chunk: int = 65536,
    voxel_batch: int = VOXEL_BATCH,
    top_k: int | None = None,
) -> np.ndarray:
    """Project voxel weights ``(V, D)`` onto candidates held in memory (unit ``directions (N, D)``, ``norms (N,)``)
    → ``(V, D)``, ``chunk`` candidates at a time; ``top_k`` restricts each voxel's softmax to its k nearest
    candidates (exact when k ≥ N)."""
    d = np.asarray(directions, np.float32)
    n = np.asarray(norms, np.float32)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for c0 in range(0, len(d), chunk):
            yield d[c0 : c0 + chunk], n[c0 : c0 + chunk], np.zeros(len(d[c0 : c0 + chunk]), np.int64)

    _check_chunk(d, n, np.asarray(weights).shape[1])
    return project_stream(weights, chunks, 1, beta, voxel_batch, top_k)[0]


def _finish(d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return r[:, None] * d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def subset_labels(n: int, k: int, seed: int) -> np.ndarray:
    """The repeat (0…k−1) of each of ``n`` candidates, −1 for the few left over (`disjoint_subsets`)."""
    labels = np.full(n, -1, np.int64)
    for j, rows in enumerate(disjoint_subsets(n, k, seed)):
        labels[rows] = j
    return labels


def disjoint_subsets(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint, equal-sized random subsets of ``n`` candidate indices (the repeats), each sorted."""
    if k < 1 or n < k:
        raise BrainattError(f"scuba.repeats must be between 1 and the number of candidates ({n}), got {k}")
    order = np.random.default_rng(seed).permutation(n)
    size = n // k
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(k)]
