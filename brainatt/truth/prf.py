"""Per-voxel retinotopic recovery: where a fitted encoder makes each voxel look, against its true pRF centre.

**Sensitivity by occlusion.** A fitted encoder's spatial sensitivity for voxel v is measured on the cached patch
tokens of the test images: patch p of every cached layer is replaced by that patch's mean token over the test
images, and S_v(p) = mean over images of (ŷ_v − ŷ_v^(p occluded))². The mean token keeps what every image's token
holds at that position (the backbone writes position into its tokens) and removes only the image's content there, so
the occluded input stays among the inputs the encoder was fitted on; for a linear readout ŷ = Σ_p w_pᵀ x_p, S_v(p) =
w_pᵀ C_p w_p (C_p: the covariance of token p over the images) is the response variance patch p carries. A gradient
would measure an infinitesimal change at each image's operating point, where the attention softmax and the readout's
nonlinearity can saturate; occlusion measures the finite effect of removing a patch and needs no backward pass (the
encoders are predicted, never differentiated, here). The voxel's **estimated centre** is the centroid of S_v² over
the grid (cell centres, in image fractions: x to the right, y down). Squaring suppresses the low sensitivity every
patch has through shared context (a softmax's normaliser, features pooled over the image), which would pull a plain
centroid towards the image centre. The rule was chosen on subj02 of the demo among the plain centroid, S², S³, the
centroid above the median or the minimum, and the peak cell (median errors 0.086, 0.058, 0.059, 0.067, 0.083, 0.082
image widths). On a toy encoder with Gaussian receptive fields of σ = 0.1 image widths on an 8 × 8 grid it is within
0.022 of the true centres (`tests/test_prf_recovery.py`); for fields narrower than a cell the centroid is drawn
towards the nearest cell centre (0.044 at σ = 0.06), so the error it reports has that floor.

**Baselines**, each placing a voxel without looking at what the encoder learned:

- *name-only*: the centre of the region of the image that the voxel's ROI name alone gives under textbook
  retinotopy (`name_only_region`): the left hemisphere sees the right half of the image and the right hemisphere
  the left half; dorsal V1–V3 (``V1d``…) the lower quarter-field of that half, ventral (``V1v``…) the upper one,
  hV4 the whole contralateral hemifield; any other ROI (category areas, ``rest``) the central quarter of the image.
- *ROI-mean* (an oracle): the mean true pRF centre of the retinotopic voxels of the voxel's ROI × hemisphere (from
  the ground truth, so no encoder can be expected to beat it everywhere).

Scored voxels are the retinotopic ones by generating kind (``ground_truth/{subject}.h5`` ``kind``: ``V1v`` …
``hV4``) with a test noise ceiling NC ≥ ``MIN_NC`` %; the name a baseline reads is the voxel's atlas label (what a
user has), so on a world with noisy atlases a voxel can carry another ROI's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from brainatt.contracts.encoding import TEST_PRED, VOXEL_SCORES, read_test_predictions, read_voxel_scores
from brainatt.contracts.features import FeatureCache
from brainatt.encoding.attention_maps import voxel_labels
from brainatt.encoding.encoders import Features, load_encoder
from brainatt.encoding.summary import write_tsv
from brainatt.io import BrainattError

MIN_NC = 20.0  # % noise ceiling: voxels below it have too little signal for any encoder to place
_QUARTER = re.compile(r"V[123]([dv])")


def name_only_region(label: str) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` in image fractions (x to the right, y down): where a ROI label (``lh.V1d``) alone puts
    its voxels' receptive fields under textbook retinotopy. The hemisphere maps the contralateral half of the image
    (``lh`` → x ∈ [0.5, 1], ``rh`` → [0, 0.5]); dorsal V1–V3 the lower quarter of it (y ∈ [0.5, 1]), ventral the upper
    (y ∈ [0, 0.5]); hV4 the whole half; anything else (category ROIs, ``rest``, a label without a hemisphere) the
    central quarter of the image [0.25, 0.75]²."""
    hemi, _, roi = label.partition(".")
    half = {"lh": (0.5, 1.0), "rh": (0.0, 0.5)}.get(hemi)
    quarter = _QUARTER.fullmatch(roi)
    if half is None or not (quarter or roi == "hV4"):
        return 0.25, 0.75, 0.25, 0.75
    if roi == "hV4":
        return (*half, 0.0, 1.0)
    return (*half, *((0.5, 1.0) if quarter.group(1) == "d" else (0.0, 0.5)))


def name_only_centre(label: str) -> tuple[float, float]:
    """The centre ``(x, y)`` of `name_only_region`."""
    x0, x1, y0, y1 = name_only_region(label)
    return (x0 + x1) / 2, (y0 + y1) / 2


def grid_centres(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``, each ``(gh, gw)``: the centres of the token cells in image fractions (x to the right, y down)."""
    gh, gw = grid
    y, x = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    return x, y


def name_only_map(label: str, grid: tuple[int, int]) -> np.ndarray:
    """``(gh, gw)``: uniform over the token cells whose centres lie in `name_only_region`, summing to 1."""
    x0, x1, y0, y1 = name_only_region(label)
    x, y = grid_centres(grid)
    inside = ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.float64)
    return inside / inside.sum()


@torch.no_grad()
def occlusion_sensitivity(head: torch.nn.Module, features: Features, batch: int = 256) -> np.ndarray:
    """``(V, gh, gw)``: each voxel's mean squared change in ``head``'s prediction over the images when one patch of
    every token layer in ``features`` (``{layer: (N, gh, gw, C)}``; a ``"pooled"`` entry is left as it is) is
    replaced by its mean over the images."""
    head = head.eval()
    layers = [k for k, v in features.items() if k != "pooled" and v.ndim == 4]
    if not layers:
        raise BrainattError("occlusion needs patch tokens: this encoder reads only the pooled embedding")
    feats = {k: v.float() for k, v in features.items()}
    gh, gw = feats[layers[0]].shape[1:3]
    means = {k: feats[k].mean(0) for k in layers}
    n = len(feats[layers[0]])
    sens = None
    for i in range(0, n, batch):
        part = {k: v[i : i + batch] for k, v in feats.items()}
        base = head(part)
        if sens is None:
            sens = torch.zeros(base.shape[1], gh, gw, dtype=torch.float64)
        for r in range(gh):
            for c in range(gw):
                occluded = dict(part)
                for k in layers:
                    occluded[k] = part[k].clone()
                    occluded[k][:, r, c] = means[k][r, c]
                sens[:, r, c] += ((head(occluded) - base).double() ** 2).sum(0)
    return (sens / n).numpy()


def sensitivity_centres(sensitivity: np.ndarray) -> np.ndarray:
    """``(V, 2)`` estimated centres ``(x, y)`` in image fractions: the centroid of each voxel's squared sensitivity
    ``(V, gh, gw)`` (the image centre for a voxel the encoder makes insensitive to every patch)."""
    v, gh, gw = sensitivity.shape
    x, y = grid_centres((gh, gw))
    w = sensitivity.reshape(v, -1).astype(np.float64) ** 2
    total = w.sum(1)
    safe = np.where(total > 0, total, 1.0)
    cx = np.where(total > 0, (w * x.ravel()).sum(1) / safe, 0.5)
    cy = np.where(total > 0, (w * y.ravel()).sum(1) / safe, 0.5)
    return np.stack([cx, cy], axis=1)


def is_retinotopic(kind: np.ndarray) -> np.ndarray:
    """``(V,)`` bool: whether each generating ``kind`` is a retinotopic area (``V1v`` … ``hV4``)."""
    return np.array([k.partition(":")[0].startswith(("V", "hV")) for k in kind], bool)


def retinotopic_voxels(kind: np.ndarray, nc: np.ndarray, min_nc: float = MIN_NC) -> np.ndarray:
    """Indices of the voxels whose generating ``kind`` is retinotopic (``V1v`` … ``hV4``) with NC ≥ ``min_nc`` %."""
    return np.flatnonzero(is_retinotopic(kind) & (np.asarray(nc) >= min_nc))


def roi_mean_centres(labels: np.ndarray, kind: np.ndarray, prf: np.ndarray) -> np.ndarray:
    """``(V, 2)``: each voxel placed at the mean true pRF centre ``prf`` ``(V, 2)`` of the retinotopic voxels (by
    ``kind``) of its ROI label; labels with none get the mean over all retinotopic voxels."""
    retinotopic = is_retinotopic(kind)
    out = np.tile(prf[retinotopic].mean(0) if retinotopic.any() else np.full(2, 0.5), (len(labels), 1))
    for label in np.unique(labels):
        own = (labels == label) & retinotopic
        if own.any():
            out[labels == label] = prf[own].mean(0)
    return out


def voxel_recovery(
    encoder_folder: str | Path, features: str | Path, ground_truth: str | Path, subject: str, min_nc: float = MIN_NC
) -> pd.DataFrame:
    """One row per scored voxel (`retinotopic_voxels`) of one fitted encoder: its label, true and estimated pRF
    centres, and the distance to the truth of the estimate (``error``), of the name-only centre
    (``error_name_only``) and of the ROI-mean centre (``error_roi_mean``), in image widths."""
    folder = Path(encoder_folder)
    encoder = load_encoder(folder)
    cache = FeatureCache(features)
    if cache.fingerprint != encoder.backbone_["fingerprint"]:
        raise BrainattError(
            f"{cache.path}: features of backbone weights {cache.fingerprint}, but {folder} was fitted on "
            f"{encoder.backbone_['fingerprint']}: pass the feature cache the encoder was fitted on"
        )
    scores = read_voxel_scores(folder / VOXEL_SCORES).sort_values("voxel")
    truth = Path(ground_truth) / f"{subject}.h5"
    with h5py.File(truth, "r") as f:
        kind = f["kind"][()].astype(str)
        prf = np.stack([f["params/prf_x"][()], f["params/prf_y"][()]], axis=1)
    if len(kind) != len(scores):
        raise BrainattError(f"{truth}: {len(kind)} voxels but {folder} scored {len(scores)}: another subject's files")
    labels = voxel_labels(scores)
    voxels = retinotopic_voxels(kind, scores["nc"].to_numpy(), min_nc)
    nsd_ids = read_test_predictions(folder / TEST_PRED).nsd_ids
    keys = encoder.feature_keys
    feats = {k: torch.from_numpy(cache.pooled(nsd_ids) if k == "pooled" else cache.tokens(k, nsd_ids)) for k in keys}
    estimate = sensitivity_centres(occlusion_sensitivity(encoder.head(), feats)[voxels])
    name_only = np.array([name_only_centre(str(label)) for label in labels[voxels]])
    roi_mean = roi_mean_centres(labels, kind, prf)[voxels]
    true = prf[voxels]
    return pd.DataFrame(
        {
            "subject": subject,
            "encoder": encoder.name,
            "voxel": voxels,
            "label": labels[voxels],
            "kind": kind[voxels],
            "true_x": true[:, 0],
            "true_y": true[:, 1],
            "x": estimate[:, 0],
            "y": estimate[:, 1],
            "error": np.hypot(*(estimate - true).T),
            "error_name_only": np.hypot(*(name_only - true).T),
            "error_roi_mean": np.hypot(*(roi_mean - true).T),
        }
    )


def recovery_summary(voxels: pd.DataFrame, runs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Per subject × encoder × ROI label, per subject × encoder over all labels (``label`` ``all``) and per encoder
    over all subjects (``subject`` ``all``): voxel count, median errors of the estimate and both baselines, and the
    share of voxels whose estimate is closer to the truth than each baseline. ``runs`` (encoder, subject) pairs get
    their ``all`` rows even without a scored voxel (NaN scores)."""

    def summarise(group: pd.DataFrame) -> dict[str, float]:
        return {
            "n_voxels": len(group),
            "median_error": group["error"].median(),
            "median_error_name_only": group["error_name_only"].median(),
            "median_error_roi_mean": group["error_roi_mean"].median(),
            "closer_than_name_only": (group["error"] < group["error_name_only"]).mean(),
            "closer_than_roi_mean": (group["error"] < group["error_roi_mean"]).mean(),
        }

    runs = runs or list(dict.fromkeys(zip(voxels["encoder"], voxels["subject"], strict=True)))
    rows = []
    for encoder, subject in runs:
        part = voxels[(voxels["encoder"] == encoder) & (voxels["subject"] == subject)]
        for label, group in part.groupby("label"):
            rows.append({"encoder": encoder, "subject": subject, "label": label, **summarise(group)})
        rows.append({"encoder": encoder, "subject": subject, "label": "all", **summarise(part)})
    for encoder in dict.fromkeys(e for e, _ in runs):
        part = voxels[voxels["encoder"] == encoder]
        rows.append({"encoder": encoder, "subject": "all", "label": "all", **summarise(part)})
    return pd.DataFrame(rows)


def write_prf_recovery(
    encoding_dir: str | Path,
    subjects: list[str],
    encoders: list[str],
    features: str | Path,
    ground_truth: str | Path,
    out: str | Path,
    min_nc: float = MIN_NC,
) -> pd.DataFrame:
    """`recovery_summary` of every ``encoder`` × subject (`voxel_recovery`) → ``out`` (``prf_recovery.tsv``)."""
    parts, runs = [], [(encoder, subject) for encoder in encoders for subject in subjects]
    for encoder, subject in runs:
        folder = Path(encoding_dir) / subject / encoder
        if not (folder / VOXEL_SCORES).exists():
            raise BrainattError(f"{folder}: no fitted {encoder} encoder of {subject}: run the encode rule first")
        parts.append(voxel_recovery(folder, features, ground_truth, subject, min_nc))
    table = recovery_summary(pd.concat(parts, ignore_index=True), runs)
    write_tsv(table, out)
    return table
