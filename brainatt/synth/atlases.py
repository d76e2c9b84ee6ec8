"""The atlases an nsd-synth user reads, estimated from simulated experiments as NSD's are, not copied from truth.

- ``prf-visualrois``: a simulated pRF experiment estimates each voxel's pRF centre with noise growing as 1/ncsnr;
  a voxel whose fit fails (ncsnr of the pRF experiment below `PRF_FIT_MIN`) stays unlabelled. V1/V2/V3/hV4 come
  from the generating areas with boundary errors (a voxel next to another area takes that area's label with
  probability `BOUNDARY_SWAP`, unlabelled cortex included), ventral vs dorsal from the sign of the estimated
  polar angle, so errors gather at the horizontal meridian.
- ``floc-*``: a simulated localizer t-map per category, t = selectivity × `LOCALIZER_GAIN` × ncsnr + N(0, 1),
  where selectivity is the noise-free response to images with minus without the category (places: scenes with a
  place layout). Voxels with t > `T_THRESHOLD` inside a search region around each ROI's seed (its generating
  sphere dilated `SEARCH_DILATION`×, like NSD's hand-drawn regions) get the nearest seed's code. Atlases overlap,
  miss selective voxels and include unselective ones.

`agreement` measures how far the atlases are from the generating kinds, as the encoding stage reads them
(retinotopic atlas first, then category atlases alphabetically, first label wins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from brainatt.synth.anatomy import ATLASES, RETINOTOPIC_ATLAS
from brainatt.synth.scenes import CATEGORIES, Scene

if TYPE_CHECKING:
    from brainatt.synth.anatomy import Anatomy
    from brainatt.synth.brain import VoxelParams

PRF_FIT_MIN = 0.2  # pRF-experiment ncsnr below which the fit fails (low variance explained)
PRF_FIT_SPREAD = 0.3  # log-normal spread of the pRF experiment's ncsnr around the voxel's ncsnr
PRF_NOISE = 0.015  # pRF-centre error (image fractions, per coordinate) at ncsnr 1
BOUNDARY_SWAP = 0.25
LOCALIZER_GAIN = 8.0
T_THRESHOLD = 3.0
SEARCH_DILATION = 1.6
AREAS = ("V1", "V2", "V3", "hV4")


def _area(kind: str) -> str:
    return kind if kind == "hV4" else kind[:2] if kind[:1] == "V" else ""


def _neighbour_areas(anatomy: Anatomy, ijk: np.ndarray, area: np.ndarray) -> list[list[str]]:
    """Per voxel, the retinotopic areas other than its own among its six face neighbours."""
    vol = np.full(anatomy.shape, -1, dtype=np.int8)
    index = np.array([AREAS.index(a) if a else -1 for a in area], dtype=np.int8)
    vol[tuple(ijk.T)] = index
    found: list[set[int]] = [set() for _ in range(len(ijk))]
    for axis in range(3):
        for step in (-1, 1):
            nb = ijk.copy()
            nb[:, axis] += step
            ok = (nb[:, axis] >= 0) & (nb[:, axis] < anatomy.shape[axis])
            other = np.full(len(ijk), -1)
            other[ok] = vol[tuple(nb[ok].T)]
            for v in np.flatnonzero((other >= 0) & (other != index)):
                found[v].add(int(other[v]))
    return [[AREAS[a] for a in sorted(f)] for f in found]


def prf_atlas(
    anatomy: Anatomy,
    ijk: np.ndarray,
    kind: np.ndarray,
    params: VoxelParams,
    ncsnr: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """``prf-visualrois`` volume from a simulated pRF experiment (see the module docstring)."""
    n = len(kind)
    fit_snr = ncsnr * np.exp(rng.normal(0, PRF_FIT_SPREAD, n))
    est_y = params.prf_y + rng.normal(0, 1, n) * PRF_NOISE / fit_snr
    area = np.array([_area(k) for k in kind], dtype=object)
    label = area.copy()
    for v, others in enumerate(_neighbour_areas(anatomy, ijk, area)):
        if others and rng.random() < BOUNDARY_SWAP:
            label[v] = others[rng.integers(len(others))]
    codes = {name: code for code, name, *_ in ATLASES[RETINOTOPIC_ATLAS]}
    vol = np.where(anatomy.cortex, 0, -1).astype(np.int16)
    for v in np.flatnonzero((label != "") & (fit_snr >= PRF_FIT_MIN)):
        name = label[v] if label[v] == "hV4" else label[v] + ("v" if est_y[v] < 0.5 else "d")  # upper = ventral
        vol[tuple(ijk[v])] = codes[name]
    return vol


def selectivity(responses: np.ndarray, scenes: list[Scene]) -> np.ndarray:
    """``(V, K)`` noise-free mean response to images with minus without each category (rows = nsd ids)."""
    present = np.array([[c in sc.categories() for c in CATEGORIES] for sc in scenes])
    out = np.empty((responses.shape[1], len(CATEGORIES)))
    for k in range(len(CATEGORIES)):
        out[:, k] = responses[present[:, k]].mean(0) - responses[~present[:, k]].mean(0)
    return out


def floc_atlases(
    anatomy: Anatomy,
    ijk: np.ndarray,
    sel: np.ndarray,
    ncsnr: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``floc-*`` volumes from simulated localizer t-maps (see the module docstring); cortex outside the measured
    voxels ``ijk`` carries no signal, only the t-map's noise."""
    cortex = np.argwhere(anatomy.cortex)
    xyz = anatomy.mni(cortex)
    where = np.full(anatomy.shape, -1)
    where[tuple(ijk.T)] = np.arange(len(ijk))
    row = where[tuple(cortex.T)]
    measured = row >= 0
    out = {}
    for atlas, rois in ATLASES.items():
        if atlas == RETINOTOPIC_ATLAS:
            continue
        k = CATEGORIES.index(rois[0][2].partition(":")[0])
        t = rng.normal(0, 1, len(cortex))
        t[measured] += sel[row[measured], k] * LOCALIZER_GAIN * ncsnr[row[measured]]
        best = np.full(len(cortex), np.inf)
        code = np.zeros(len(cortex), dtype=np.int16)
        for seed in (s for s in anatomy.seeds if s.atlas == atlas):
            d = np.linalg.norm(xyz - seed.center, axis=-1) / seed.radius
            win = (d < SEARCH_DILATION) & (d < best)
            best[win] = d[win]
            code[win] = seed.code
        vol = np.where(anatomy.cortex, 0, -1).astype(np.int16)
        vol[tuple(cortex.T)] = np.where(t > T_THRESHOLD, code, 0)
        out[atlas] = vol
    return out


def agreement(atlases: dict[str, np.ndarray], ijk: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    """How the atlases at voxels ``ijk`` differ from the generating ``kind``: labelled voxels, the fraction of them
    whose label (first wins, as the encoding stage reads them) differs from their kind, misses (voxels with a kind
    and no label), false positives (no kind, a label) and overlaps (more than one label)."""
    order = sorted((a for a in ATLASES if a in atlases), key=lambda a: (a != RETINOTOPIC_ATLAS, a))
    label = np.full(len(kind), "", dtype=object)
    n_labels = np.zeros(len(kind), int)
    for atlas in order:
        kinds = {code: k for code, _name, k, *_ in ATLASES[atlas]}
        codes = atlases[atlas][tuple(ijk.T)]
        hit = codes > 0
        n_labels += hit
        free = hit & (label == "")
        label[free] = [kinds[int(c)] for c in codes[free]]
    labelled = n_labels > 0
    has_kind = kind != ""
    return {
        "voxels": len(kind),
        "labelled": int(labelled.sum()),
        "label_differs_fraction": float((labelled & (label != kind)).sum() / max(labelled.sum(), 1)),
        "misses": int((has_kind & ~labelled).sum()),
        "miss_fraction": float((has_kind & ~labelled).sum() / max(has_kind.sum(), 1)),
        "false_positives": int((~has_kind & labelled).sum()),
        "overlaps": int((n_labels > 1).sum()),
    }


def observed_atlases(
    anatomy: Anatomy,
    ijk: np.ndarray,
    kind: np.ndarray,
    params: VoxelParams,
    ncsnr: np.ndarray,
    responses: np.ndarray,
    scenes: list[Scene],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """All written atlases of one subject: the estimated ``prf-visualrois`` and ``floc-*``, and nsdgeneral."""
    atlases = {RETINOTOPIC_ATLAS: prf_atlas(anatomy, ijk, kind, params, ncsnr, rng)}
    atlases.update(floc_atlases(anatomy, ijk, selectivity(responses, scenes), ncsnr, rng))
    atlases["nsdgeneral"] = anatomy.atlases["nsdgeneral"]
    return atlases
