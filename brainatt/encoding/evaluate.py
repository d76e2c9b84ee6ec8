"""Scoring encoders on the held-out test images: per-voxel scores and the per-ROI table (DESIGN.md, "Metrics")."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from brainatt.encoding.data import FAMILIES, SubjectData
from brainatt.encoding.metrics import nc_normalized, pearson_r, r2_score
from brainatt.io import BrainattError

NC_MIN = 5.0  # % : voxels below this ceiling are excluded from the headline NC-normalised means


def load_test_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A fitted encoder's ``test_pred.h5`` as `fit.fit_encoder` writes it: the test images' nsd ids ``(N,)`` and
    the predicted responses ``(N, V)`` in z units."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: no test predictions here: run the encode rule for this subject and encoder")
    with h5py.File(path, "r") as f:
        return f["nsd_ids"][()], f["pred"][()]


def load_truth(path: str | Path, sub: SubjectData) -> np.ndarray:
    """Noise-free test responses ``(N_test, V)`` from nsd-synth's ``ground_truth/{subject}.h5``, voxels by ijk."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: ground-truth file missing (only nsd-synth worlds have one)")
    if sub.ijk is None:
        raise BrainattError(f"{sub.path}: surface data: the ground truth is matched to volume voxels (NSD layout only)")
    with h5py.File(path, "r") as f:
        lookup = {tuple(v): i for i, v in enumerate(f["ijk"][()])}
        cols = [lookup.get(tuple(v), -1) for v in sub.ijk]
        if min(cols) < 0:
            raise BrainattError(f"{path}: voxels of {sub.path} are missing from the ground truth: wrong subject?")
        return f["responses"][()][sub.test_ids][:, cols]


def voxel_scores(sub: SubjectData, pred: np.ndarray, truth: np.ndarray | None = None) -> pd.DataFrame:
    """One row per voxel: ROI, hemisphere, family, r, R², NC (%), NC-normalised accuracy, r against the truth."""
    r = pearson_r(sub.test_y, pred)
    return pd.DataFrame(
        {
            "voxel": np.arange(sub.n_voxels),
            "roi": sub.roi,
            "hemi": sub.hemi,
            "family": sub.family,
            "r": r,
            "r2": r2_score(sub.test_y, pred),
            "nc": sub.nc,
            "nc_norm": nc_normalized(r, sub.nc),
            "r_truth": pearson_r(truth, pred) if truth is not None else np.nan,
        }
    )


def _row(group: pd.DataFrame) -> dict:
    ok = group["nc"] >= NC_MIN
    return {
        "n_voxels": len(group),
        "mean_r": group["r"].mean(),
        "nc_norm": group.loc[ok, "nc_norm"].mean() if ok.any() else np.nan,
        "nc_norm_all": group["nc_norm"].mean(),
        "r_truth": group["r_truth"].mean(),
    }


def summarize(scores: pd.DataFrame, subject: str, encoder: str) -> pd.DataFrame:
    """Per-ROI rows, then ``family:<family>`` and ``all`` rows, for one subject × encoder."""
    rows = []
    for (roi, family), group in scores.groupby(["roi", "family"], sort=False):
        rows.append({"roi": roi, "family": family, **_row(group)})
    for family in FAMILIES:
        group = scores[scores["family"] == family]
        if len(group):
            rows.append({"roi": f"family:{family}", "family": family, **_row(group)})
    rows.append({"roi": "all", "family": "all", **_row(scores)})
    table = pd.DataFrame(rows)
    table.insert(0, "encoder", encoder)
    table.insert(0, "subject", subject)
    return table
