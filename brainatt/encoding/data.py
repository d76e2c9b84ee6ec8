"""What an encoder is fitted to: a subject's responses, voxel ROIs and queries, and the train/validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from brainatt.io import BrainattError

REST = "rest"
FAMILIES = ("retinotopic", "category", "other")


def atlas_family(atlas: str) -> str | None:
    """Retinotopic (pRF) or category (fLoc) atlas; ``None`` for masks and parcellations that define no ROI."""
    if atlas.startswith("prf-"):
        return "retinotopic"
    if atlas.startswith("floc-"):
        return "category"
    return None


@dataclass
class SubjectData:
    """A subject's repeat-averaged responses and voxel annotations (from ``responses.h5``).

    Each voxel belongs to one ROI: the first label it has among the retinotopic atlases, then the category
    atlases (in the file's sorted atlas order), else ``rest``. Encoders get their queries from `assign_queries`.
    """

    path: Path
    train_ids: np.ndarray
    train_y: np.ndarray  # (n_train, V) float32
    test_ids: np.ndarray
    test_y: np.ndarray
    nc: np.ndarray  # (V,) noise ceiling of the test responses, %
    roi: np.ndarray  # (V,) ROI name
    hemi: np.ndarray  # (V,) 'lh' | 'rh'
    family: np.ndarray  # (V,) one of FAMILIES
    ijk: np.ndarray | None  # (V, 3) volume coordinates; None for surface data (Algonauts)

    @property
    def n_voxels(self) -> int:
        return self.train_y.shape[1]


def _names(f: h5py.File, atlas: str) -> dict[int, str]:
    out = {}
    for item in f[f"voxels/roi_names/{atlas}"][()]:
        code, _, name = item.decode().partition(":")
        out[int(code)] = name
    return out


def load_subject(path: str | Path) -> SubjectData:
    """Read ``responses.h5`` and assign each voxel its ROI, family and query."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: responses file missing: run the preprocess rule for this subject")
    with h5py.File(path, "r") as f:
        for key in ("train/betas", "test/betas", "voxels/hemi", "voxels/nc_test"):
            if key not in f:
                raise BrainattError(f"{path}: no '{key}': the file is not a brainatt responses.h5; rerun preprocess")
        n_vox = f["train/betas"].shape[1]
        roi = np.full(n_vox, REST, dtype=object)
        family = np.full(n_vox, "other", dtype=object)
        atlases = sorted(f["voxels/roi"], key=lambda a: (atlas_family(a) != "retinotopic", a))
        for atlas in atlases:
            fam = atlas_family(atlas)
            if fam is None:
                continue
            codes = f[f"voxels/roi/{atlas}"][()]
            names = _names(f, atlas)
            free = (roi == REST) & (codes > 0)
            for code in np.unique(codes[free]):
                hit = free & (codes == code)
                roi[hit] = names.get(int(code), f"{atlas}-{code}")
                family[hit] = fam
        hemi = f["voxels/hemi"][()].astype(str)
        data = SubjectData(
            path=path,
            train_ids=f["train/nsd_ids"][()],
            train_y=f["train/betas"][()].astype(np.float32),
            test_ids=f["test/nsd_ids"][()],
            test_y=f["test/betas"][()].astype(np.float32),
            nc=f["voxels/nc_test"][()].astype(np.float64),
            roi=roi.astype(str),
            hemi=hemi,
            family=family.astype(str),
            ijk=f["voxels/ijk"][()] if "voxels/ijk" in f else None,
        )
    if not len(data.test_ids):
        raise BrainattError(f"{path}: no test images: the shared test split is empty; check the design file")
    return data


QUERY_MODES = ("roi", "voxel", "retinotopic-voxel", "hemisphere")


def assign_queries(sub: SubjectData, mode: str) -> tuple[list[str], np.ndarray]:
    """Query names and each voxel's query index.

    ``roi``: one query per ROI × hemisphere that owns voxels, named ``lh.FFA-1`` (empty ROIs get none: their
    attention would be untrained noise), plus ``lh.rest``/``rh.rest``; ``voxel``: one per voxel;
    ``retinotopic-voxel``: one per voxel in retinotopic ROIs (each has its own pRF, which one pooled ROI
    vector cannot carry) and one per ROI elsewhere; ``hemisphere``: one per hemisphere, ``lh`` and ``rh`` (the
    reference code's ``hemis`` readout, an ablation: every ROI must share one routing). Per-voxel queries are named
    ``lh.V1v#17`` (17 = the voxel's index). ``roi`` queries are sorted by name; the per-voxel modes number queries
    in the order of their first voxel, so in ``voxel`` mode voxel v reads query v (`VoxelReadout` then needs no
    gather).
    """
    if mode not in QUERY_MODES:
        raise BrainattError(f"query mode {mode!r} unknown: choose from {', '.join(QUERY_MODES)}")
    if mode == "hemisphere":
        names, index = np.unique(sub.hemi, return_inverse=True)
        return [str(n) for n in names], index
    labels = roi_labels(sub.hemi, sub.roi).astype(object)
    own = np.ones(sub.n_voxels, bool) if mode == "voxel" else (sub.family == "retinotopic")
    if mode != "roi":
        labels[own] = [f"{lab}#{v}" for lab, v in zip(labels[own], np.flatnonzero(own), strict=True)]
    names, first, index = np.unique(labels.astype(str), return_index=True, return_inverse=True)
    if mode != "roi":  # sorted names would put lh.V1v#10 before lh.V1v#2
        order = np.argsort(first)
        names, index = names[order], np.argsort(order)[index]
    return [str(n) for n in names], index


def roi_labels(hemi: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Each voxel's ROI label, ``lh.FFA-1``: the name of its query in ``roi`` mode."""
    return np.char.add(np.char.add(np.asarray(hemi, str), "."), np.asarray(roi, str))


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed split of the training images into fit and validation indices (the test set is never used)."""
    if not 0 < fraction < 1:
        raise BrainattError(f"encoding.val_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
