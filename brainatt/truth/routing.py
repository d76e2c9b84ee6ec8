"""Attention routing scored against nsd-synth's ground truth.

One row per ROI × hemisphere (``query``: its label, ``lh.FFA-1``; with ROI queries, the query's name). The ground
truth says what its voxels do (the majority generating kind), and the map scored is what they attend to
(`attention_maps.roi_attention`: with ROI queries the query's map). The headline columns score the plain mean of
the last layer's heads (``attention.h5``'s ``maps_head_mean``, the reference's map: what the model computes, with
nothing chosen after the fit); the same column with the suffix ``_weighted`` scores ``maps``, whose heads are
weighted in each image by their importance to the query's voxels (a reading of the model that uses its
predictions). A file with one set of maps (no ``maps_head_mean``) has its ``maps`` as the headline and no
``_weighted`` columns.
- a **category** ROI (face, body, word, food voxels) should put its attention on that category's objects:
  ``mass_ratio`` = attention mass on the object's patches / the share of patches the object covers (1 = no
  routing), over test images that contain the category. An object's patches are the grid cells at least
  ``COVER``-covered by its pixels, from re-rendering the test scenes at the token grid (the generator is
  deterministic). Since the ratio cannot exceed 1/share, ``mass_ratio_small`` repeats it over images where the
  object covers at most ``SMALL`` of the patches (large bodies can fill a third of the image). The ratio also
  counts diffuse attention against the ROI, so ``peak_on_object`` adds the share of those images whose
  attention peak lies on the object, beside ``peak_chance``, the object's mean share of patches (what a peak
  dropped at random would score). ``truth_mass_ratio`` is the same ratio for the truth's own pooling weights
  (`VoxelReadout.pooling_weights` of the ROI's voxels of that category, summed into token cells): how
  focused routing can be on this grid. Places are whole-scene layouts with no object patches; their ROIs are
  not scored this way.
  Baselines, maps that are the same for every image, scored the same way: ``mass_ratio_best_static``, all
  attention on the one patch that most often lies on the category's objects in the world's scenes outside the
  test set (the most any static receptive field placed from those scenes puts on the objects), with
  ``over_best_static`` = ``mass_ratio`` / ``mass_ratio_best_static`` (above 1: the map follows the object from
  image to image, the digest's claim 3); ``mass_ratio_name_only``, the map the ROI's name alone gives
  (`prf.name_only_map`: for a category ROI, uniform over the central quarter of the image); and
  ``mass_ratio_static``, the ROI's own headline maps averaged over the other test images (leave one out).
  ``truth_variability`` is the truth's own ``variability`` (below).
- a **retinotopic** ROI should look where its voxels' pRFs are: ``distance`` between the attention centroid
  (mean over test images) and the mean true pRF centre, in image widths, beside ``distance_name_only`` (the centre
  of the region the ROI's name gives under textbook retinotopy, `prf.name_only_region`) and ``distance_uniform``
  (the image centre). Its map should barely change with the image. Per-voxel recovery, a stricter test than this
  ROI centroid, is `prf`'s (``prf_recovery.tsv``).
- every ROI: ``variability`` is the mean over test images of the total-variation distance between the image's
  map and the mean map (0 = the same map for every image; 1 − 1/N for N disjoint maps); ``mixed`` marks the ROIs whose
  voxels are mostly nsd-synth's ``:mixed`` kinds, category areas that keep a spatial preference and some
  retinotopy (OFA, OPA, OWFA).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from brainatt.contracts.encoding import ATTENTION, VOXEL_SCORES, open_attention, read_voxel_scores
from brainatt.encoding.attention_maps import roi_attention, roi_voxels, voxel_labels, voxel_queries
from brainatt.encoding.summary import write_tsv
from brainatt.io import BrainattError
from brainatt.synth.brain import VisualSystem, VoxelReadout
from brainatt.synth.scenes import CATEGORIES, OBJECT_CATEGORIES, render
from brainatt.synth.world import WorldSpec, load_brain, visual_features, world_scenes
from brainatt.truth.prf import grid_centres, name_only_centre, name_only_map

COVER = 0.25  # a patch belongs to an object when the object covers at least this fraction of it
SMALL = 0.15  # "small object" images: the object covers at most this share of the patches
# routing.tsv's columns in order: each headline with its baselines, then the weighted maps' scores
COLUMNS = (
    *("subject", "query", "truth", "family", "mixed", "n_voxels", "n_images"),
    *("mass_ratio", "mass_ratio_best_static", "over_best_static", "mass_ratio_name_only", "mass_ratio_static"),
    *("peak_on_object", "peak_chance", "n_small", "mass_ratio_small", "truth_mass_ratio"),
    *("distance", "distance_name_only", "distance_uniform", "centre_x", "centre_y", "true_x", "true_y"),
    *("variability", "truth_variability", "mass_ratio_weighted", "distance_weighted", "variability_weighted"),
)


def _rendered(
    ground_truth: Path, nsd_ids: np.ndarray, grid: tuple[int, int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-render the world's scenes one by one: the image ``(H, W, 3)`` and each category's cover ``(K, gh, gw)``."""
    world = json.loads((ground_truth / "world.json").read_text())
    scenes_json = json.loads((ground_truth / "scenes.json").read_text())
    if grid[0] != grid[1]:
        raise BrainattError(f"{ground_truth}: object masks need a square token grid, got {grid}")
    scenes, _ = world_scenes(WorldSpec.from_config(world["spec"]))
    for i in nsd_ids:
        scene = scenes[int(i)]
        listed = [(o["category"], round(o["cx"], 6)) for o in scenes_json[int(i)]["objects"]]
        if [(o.category, round(o.cx, 6)) for o in scene.objects] != listed:
            raise BrainattError(
                f"{ground_truth}: scene {i} differs from the generator's: rerun synthesize with this version"
            )
        yield render(scene, world["spec"]["image_size"], grid[0])


def _render_scenes(ground_truth: Path, nsd_ids: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Re-render the world's scenes: images ``(N, H, W, 3)`` and each category's cover ``(N, K, gh, gw)``."""
    images, covers = zip(*_rendered(ground_truth, nsd_ids, grid), strict=True)
    return np.stack(images), np.stack(covers)


def _test_scenes(
    ground_truth: Path, nsd_ids: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, torch.Tensor, np.ndarray | None]:
    """The test scenes' category covers on the token grid, the visual system's category maps, and ``(K, gh, gw)``
    how often each patch lies on each category's objects in the world's other scenes (``None`` if there are none).
    Every subject is tested on the same shared images and the visual system is the same for all, so the summary
    computes them once (cached on the world files' path and modification times; the arrays are shared: read
    only)."""
    files = [ground_truth / name for name in ("world.json", "scenes.json")]
    stamp = tuple(f.stat().st_mtime_ns for f in files)
    return _cached_test_scenes(ground_truth.resolve(), tuple(nsd_ids.tolist()), grid, stamp)


@functools.lru_cache(maxsize=2)
def _cached_test_scenes(
    ground_truth: Path, nsd_ids: tuple[int, ...], grid: tuple[int, int], stamp: tuple[int, ...]
) -> tuple[np.ndarray, torch.Tensor, np.ndarray | None]:
    """`_test_scenes`, cached; ``stamp`` only keys the cache."""
    images, cover = _render_scenes(ground_truth, np.array(nsd_ids), grid)
    cover.flags.writeable = False
    n_scenes = len(json.loads((ground_truth / "scenes.json").read_text()))
    others = np.setdiff1d(np.arange(n_scenes), nsd_ids)
    prior = None
    if len(others):  # scene by scene: the rendered images are not kept
        prior = sum(_masks_from_cover(c) for _, c in _rendered(ground_truth, others, grid)) / len(others)
        prior.flags.writeable = False
    return cover, visual_features(VisualSystem().eval(), images)[1], prior


def _centroid(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean over images of the attention centroid of ``maps`` ``(N, gh, gw)``, in image widths."""
    return (maps * x).sum((1, 2)).mean(), (maps * y).sum((1, 2)).mean()


def _mass_ratio(maps: np.ndarray, masks: np.ndarray, images: np.ndarray) -> float:
    """Attention mass on the object's patches over the object's share of the patches, both averaged over
    ``images`` (1 = no routing). ``maps`` ``(N | 1, gh, gw)``, ``masks`` ``(N, gh, gw)`` bool, ``images`` bool."""
    return float((maps * masks).sum((1, 2))[images].mean() / masks.mean((1, 2))[images].mean())


def map_variability(maps: np.ndarray) -> float:
    """Mean over images of the total-variation distance between each map ``(N, gh, gw)`` and their mean map."""
    return float(0.5 * np.abs(maps - maps.mean(0)).sum((1, 2)).mean())


def _masks_from_cover(cover: np.ndarray) -> np.ndarray:
    peak = cover.max((-2, -1), keepdims=True)
    # A small object may cover no cell by COVER: it then owns its best-covered cell.
    return (cover >= np.minimum(COVER, peak)) & (cover > 0)


def object_masks(ground_truth: str | Path, nsd_ids: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(N, K, gh, gw)`` bool: the grid cells each category covers (≥ ``COVER``, else its best-covered cell)."""
    return _masks_from_cover(_render_scenes(Path(ground_truth), nsd_ids, grid)[1])


@torch.no_grad()
def truth_maps(
    readout: VoxelReadout, cats: torch.Tensor, category: int, voxels: np.ndarray, grid: tuple[int, int]
) -> np.ndarray:
    """The truth's pooling weights of ``voxels`` for one category, averaged over them, on the token grid."""
    g = cats.shape[-1]
    w = torch.cat([readout.pooling_weights(c, category, torch.as_tensor(voxels)).mean(1) for c in cats.split(64)])
    w = nn.functional.adaptive_avg_pool2d(w.unflatten(-1, (g, g))[:, None].double(), grid)[:, 0]
    return (w / w.sum((1, 2), keepdim=True)).numpy()


def routing_scores(
    attention_h5: str | Path, voxel_scores: pd.DataFrame, ground_truth: str | Path, subject: str
) -> pd.DataFrame:
    """One row per ROI × hemisphere (``query``: its label, ``lh.FFA-1``): what its voxels are in truth and how well
    what they attend to routes to it. With ROI queries that is the ROI's query's map; with other query modes the
    mean over the ROI's voxels of the map of the query each reads (`attention_maps.roi_attention`)."""
    gt = Path(ground_truth)
    with h5py.File(gt / f"{subject}.h5", "r") as f:
        kind = f["kind"][()].astype(str)
        prf_x, prf_y = f["params/prf_x"][()], f["params/prf_y"][()]
    if len(kind) != len(voxel_scores):
        raise BrainattError(f"{gt / subject}.h5: {len(kind)} voxels but the encoder scored {len(voxel_scores)}")
    labels = voxel_labels(voxel_scores)
    with open_attention(attention_h5) as f:
        nsd_ids = f["nsd_ids"][()]
        grid = tuple(int(v) for v in f.attrs["grid"])
        voxel_query = voxel_queries(f, labels)
        rois = roi_voxels(labels)
        # the headline is the plain head mean; `maps` weights heads per image by their importance to the voxels
        both = "maps_head_mean" in f
        weighted = {label: roi_attention(f["maps"], voxel_query, voxels) for label, voxels in rois.items()}
        maps = (
            {label: roi_attention(f["maps_head_mean"], voxel_query, voxels) for label, voxels in rois.items()}
            if both
            else weighted
        )
    cover, cats, prior = _test_scenes(gt, nsd_ids, grid)
    objects = _masks_from_cover(cover)
    brain = load_brain(gt, subject)
    x, y = grid_centres(grid)
    rows = []
    for name, voxels in rois.items():
        if maps[name] is None:  # no voxel of this ROI reads a query (an attention file older than voxel_query)
            continue
        kinds, _, mixed = zip(*(k.partition(":") for k in kind[voxels]), strict=True)
        truth = Counter(kinds).most_common(1)[0][0]
        a = maps[name]
        row = {
            "subject": subject,
            "query": name,
            "truth": truth or "unlabelled",
            "mixed": np.mean([bool(m) for m in mixed]) > 0.5,
            "n_voxels": len(voxels),
            "variability": map_variability(a),
        }
        if both:
            row["variability_weighted"] = map_variability(weighted[name])
        if truth in OBJECT_CATEGORIES:
            masks = objects[:, CATEGORIES.index(truth)]
            share = masks.mean((1, 2))
            has, small = share > 0, (share > 0) & (share <= SMALL)
            peak = a.reshape(len(a), -1).argmax(1)
            on_object = masks.reshape(len(masks), -1)[np.arange(len(masks)), peak]
            if has.any():
                own = voxels[[k == truth for k in kinds]]
                truth_map = truth_maps(brain.readout, cats, CATEGORIES.index(truth), own, grid)
                row.update(
                    family="category",
                    n_images=int(has.sum()),
                    mass_ratio=_mass_ratio(a, masks, has),
                    mass_ratio_name_only=_mass_ratio(name_only_map(name, grid)[None], masks, has),
                    mass_ratio_static=_mass_ratio((a.sum(0) - a) / max(len(a) - 1, 1), masks, has),
                    peak_on_object=on_object[has].mean(),
                    peak_chance=share[has].mean(),  # a uniform map's mass, and a random peak's hit rate
                    truth_mass_ratio=_mass_ratio(truth_map, masks, has),
                    truth_variability=map_variability(truth_map),
                )
                if prior is not None:
                    best = np.zeros((1, *grid))
                    best.flat[prior[CATEGORIES.index(truth)].argmax()] = 1
                    row["mass_ratio_best_static"] = _mass_ratio(best, masks, has)
                    row["over_best_static"] = row["mass_ratio"] / row["mass_ratio_best_static"]
                if both:
                    row["mass_ratio_weighted"] = _mass_ratio(weighted[name], masks, has)
            if small.any():
                row.update(n_small=int(small.sum()), mass_ratio_small=_mass_ratio(a, masks, small))
        elif truth.startswith(("V", "hV")):
            cx, cy = _centroid(a, x, y)
            nx, ny = name_only_centre(name)
            tx, ty = prf_x[voxels].mean(), prf_y[voxels].mean()
            row.update(
                family="retinotopic",
                n_images=len(nsd_ids),
                centre_x=cx,
                centre_y=cy,
                true_x=tx,
                true_y=ty,
                distance=float(np.hypot(cx - tx, cy - ty)),
                distance_name_only=float(np.hypot(nx - tx, ny - ty)),
                distance_uniform=float(np.hypot(0.5 - tx, 0.5 - ty)),
            )
            if both:
                wx, wy = _centroid(weighted[name], x, y)
                row["distance_weighted"] = float(np.hypot(wx - tx, wy - ty))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table[[c for c in COLUMNS if c in table] + [c for c in table if c not in COLUMNS]]


def write_routing_table(
    encoding_dir: str | Path,
    subjects: list[str],
    ground_truth: str | Path,
    out: str | Path,
    encoder: str = "transformer",
) -> pd.DataFrame:
    """`routing_scores` of ``encoder``'s attention for every subject → ``out`` (``routing.tsv``)."""
    rows = []
    for subject in subjects:
        folder = Path(encoding_dir) / subject / encoder
        if not (folder / ATTENTION).exists():
            raise BrainattError(f"{folder / ATTENTION}: missing: routing needs the {encoder} encoder of {subject}")
        scores = read_voxel_scores(folder / VOXEL_SCORES)
        rows.append(routing_scores(folder / ATTENTION, scores, ground_truth, subject))
    table = pd.concat(rows, ignore_index=True)
    write_tsv(table, out)
    return table
