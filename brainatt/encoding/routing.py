"""Attention routing scored against nsd-synth's ground truth.

For each query of the transformer, the ground truth says what its voxels do (the majority generating kind):
- a **category** query (face, body, word, food voxels) should put its attention on that category's objects:
  ``mass_ratio`` = attention mass on the object's patches / the share of patches the object covers (1 = no
  routing), over test images that contain the category. Objects are their scene boxes (centre ± size/2), which
  over-covers round objects and so errs against the encoder. Places are whole-scene layouts with no object
  patches; their queries are not scored this way.
- a **retinotopic** query should look where its voxels' pRFs are: ``distance`` between the attention centroid
  (mean over test images) and the mean true pRF centre, in image widths; ``distance_uniform`` is the same for
  a uniform map (the image centre), the score to beat.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from brainatt.io import BrainattError

OBJECT_CATEGORIES = ("face", "body", "word", "food")


def _grid_centres(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    gh, gw = grid
    y, x = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    return x, y


def object_mask(objects: list[dict], category: str, grid: tuple[int, int]) -> np.ndarray:
    """Patches whose centre lies in a box of ``category`` (at least the patch holding each box centre)."""
    x, y = _grid_centres(grid)
    mask = np.zeros(grid, dtype=bool)
    for o in objects:
        if o["category"] != category:
            continue
        half = o["size"] / 2
        mask |= (np.abs(x - o["cx"]) <= half) & (np.abs(y - o["cy"]) <= half)
        mask[min(int(o["cy"] * grid[0]), grid[0] - 1), min(int(o["cx"] * grid[1]), grid[1] - 1)] = True
    return mask


def routing_scores(attention_h5: str | Path, voxel_scores: pd.DataFrame, ground_truth: str | Path, subject: str):
    """One row per query: what its voxels are in truth and how well its attention routes to it."""
    gt = Path(ground_truth)
    scenes = json.loads((gt / "scenes.json").read_text())
    with h5py.File(attention_h5, "r") as f:
        queries = f["queries"][()].astype(str)
        nsd_ids = f["nsd_ids"][()]
        maps = f["maps"][()].astype(np.float64)
        grid = tuple(int(v) for v in f.attrs["grid"])
    with h5py.File(gt / f"{subject}.h5", "r") as f:
        kind = f["kind"][()].astype(str)
        prf_x, prf_y = f["params/prf_x"][()], f["params/prf_y"][()]
    if len(kind) != len(voxel_scores):
        raise BrainattError(f"{gt / subject}.h5: {len(kind)} voxels but the encoder scored {len(voxel_scores)}")
    x, y = _grid_centres(grid)
    label = voxel_scores["hemi"].astype(str) + "." + voxel_scores["roi"].astype(str)
    rows = []
    for q, name in enumerate(queries):
        voxels = np.flatnonzero(label.to_numpy() == name)
        kinds = [k.partition(":")[0] for k in kind[voxels]]
        truth = Counter(kinds).most_common(1)[0][0] if kinds else ""
        row = {"subject": subject, "query": name, "truth": truth or "unlabelled", "n_voxels": len(voxels)}
        a = maps[q]
        if truth in OBJECT_CATEGORIES:
            masks = [object_mask(scenes[int(i)]["objects"], truth, grid) for i in nsd_ids]
            has = np.array([m.any() for m in masks])
            if has.any():
                mass = np.array([a[i][m].sum() for i, m in enumerate(masks) if has[i]])
                share = np.array([m.mean() for m in masks if m.any()])
                row.update(family="category", n_images=int(has.sum()), mass_ratio=mass.mean() / share.mean())
        elif truth.startswith(("V", "hV")):
            cx, cy = (a * x).sum((1, 2)).mean(), (a * y).sum((1, 2)).mean()
            tx, ty = prf_x[voxels].mean(), prf_y[voxels].mean()
            row.update(
                family="retinotopic",
                n_images=len(nsd_ids),
                centre_x=cx,
                centre_y=cy,
                true_x=tx,
                true_y=ty,
                distance=float(np.hypot(cx - tx, cy - ty)),
                distance_uniform=float(np.hypot(0.5 - tx, 0.5 - ty)),
            )
        rows.append(row)
    return pd.DataFrame(rows)
