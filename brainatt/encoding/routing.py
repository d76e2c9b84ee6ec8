"""Attention routing scored against nsd-synth's ground truth.

For each query of the transformer, the ground truth says what its voxels do (the majority generating kind):
- a **category** query (face, body, word, food voxels) should put its attention on that category's objects:
  ``mass_ratio`` = attention mass on the object's patches / the share of patches the object covers (1 = no
  routing), over test images that contain the category. An object's patches are the grid cells at least
  ``COVER``-covered by its pixels, from re-rendering the test scenes at the token grid (the generator is
  deterministic). Since the ratio cannot exceed 1/share, ``mass_ratio_small`` repeats it over images where the
  object covers at most ``SMALL`` of the patches (large bodies can fill a third of the image). The ratio also
  counts diffuse attention against the query, so ``peak_on_object`` adds the share of those images whose
  attention peak lies on the object, beside ``peak_chance``, the object's mean share of patches (what a peak
  dropped at random would score). Places are whole-scene layouts with no object patches; their queries are not
  scored this way.
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
from brainatt.synth.scenes import CATEGORIES, OBJECT_CATEGORIES, render
from brainatt.synth.world import WorldSpec, world_scenes

COVER = 0.25  # a patch belongs to an object when the object covers at least this fraction of it
SMALL = 0.15  # "small object" images: the object covers at most this share of the patches


def _grid_centres(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    gh, gw = grid
    y, x = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    return x, y


def object_masks(ground_truth: str | Path, nsd_ids: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(N, K, gh, gw)`` bool: the grid cells each category covers (≥ ``COVER``, else its best-covered cell)."""
    gt = Path(ground_truth)
    world = json.loads((gt / "world.json").read_text())
    scenes_json = json.loads((gt / "scenes.json").read_text())
    if grid[0] != grid[1]:
        raise BrainattError(f"{gt}: object masks need a square token grid, got {grid}")
    scenes, _ = world_scenes(WorldSpec.from_config(world["spec"]))
    masks = []
    for i in nsd_ids:
        scene = scenes[int(i)]
        listed = [(o["category"], round(o["cx"], 6)) for o in scenes_json[int(i)]["objects"]]
        if [(o.category, round(o.cx, 6)) for o in scene.objects] != listed:
            raise BrainattError(f"{gt}: scene {i} differs from the generator's: rerun synthesize with this version")
        cover = render(scene, world["spec"]["image_size"], grid[0])[1]  # (K, gh, gw) covered fraction
        peak = cover.max((1, 2), keepdims=True)
        # A small object may cover no cell by COVER: it then owns its best-covered cell.
        masks.append((cover >= np.minimum(COVER, peak)) & (cover > 0))
    return np.stack(masks)


def routing_scores(attention_h5: str | Path, voxel_scores: pd.DataFrame, ground_truth: str | Path, subject: str):
    """One row per query: what its voxels are in truth and how well its attention routes to it."""
    gt = Path(ground_truth)
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
    objects = object_masks(gt, nsd_ids, grid)
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
            masks = objects[:, CATEGORIES.index(truth)]
            share = masks.mean((1, 2))
            mass = (a * masks).sum((1, 2))
            has, small = share > 0, (share > 0) & (share <= SMALL)
            peak = a.reshape(len(a), -1).argmax(1)
            on_object = masks.reshape(len(masks), -1)[np.arange(len(masks)), peak]
            if has.any():
                chance = share[has].mean()  # a uniform map's mass, and a random peak's hit rate
                row.update(
                    family="category",
                    n_images=int(has.sum()),
                    mass_ratio=mass[has].mean() / chance,
                    peak_on_object=on_object[has].mean(),
                    peak_chance=chance,
                )
            if small.any():
                row.update(n_small=int(small.sum()), mass_ratio_small=mass[small].mean() / share[small].mean())
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
