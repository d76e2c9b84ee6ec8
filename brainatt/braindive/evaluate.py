"""BrainDiVE evaluation: every generated image scored, then summarised per subject × target × image set.

Units: an ROI's activation is its mean response over its voxels, standardised by the mean and SD of that ROI's
activation over the subject's natural test images (``pred_*``: the same encoder's predictions on them;
``true_*``: the true responses to them, on nsd-synth). So 1 means one SD above the average natural image.

Image sets per subject × target: ``kept`` (the re-ranked top share at the main γ), ``guided`` (every image at
each γ), ``unguided_same_seeds`` (the γ = 0 images of the kept images' seeds), ``natural_all`` and
``natural_top10`` (the test images, and their top 10% by *measured* response of the target ROI). Each row
holds the mean activation of every ROI and the share of images a CLIP zero-shot classifier assigns to the
target's category (``zero_shot``, for targets with category prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainatt.braindive.objective import roi_mask, roi_matrix, roi_means
from brainatt.braindive.pipeline import UNGUIDED, DiveConfig, load_png, read_manifest
from brainatt.contracts.responses import read_responses
from brainatt.contracts.stimuli import Stimuli
from brainatt.encoding.encoders import load_image_encoder
from brainatt.images import images_to_tensor
from brainatt.models.loading import ClipModel

log = logging.getLogger(__name__)
# (subject, its responses.h5) → images → true responses (B, V), where the world has a ground truth
TruthFn = Callable[[str, str | Path], nn.Module]
TOP_NATURAL = 0.10


@torch.no_grad()
def _activations(model: nn.Module, images: torch.Tensor, weights: torch.Tensor, batch: int = 64) -> np.ndarray:
    out = [roi_means(model(images[i : i + batch]), weights) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def zero_shot(clip: ClipModel, images: torch.Tensor, categories: dict[str, list[str]]) -> list[str]:
    """Each image's category among ``categories`` (name → prompts, their mean text embedding per class)."""
    names = list(categories)
    classes = torch.stack([clip.encode_text(categories[c], normalize=True).mean(0) for c in names])
    classes = classes / classes.norm(dim=1, keepdim=True)
    pred = torch.cat([clip.encode_image(images[i : i + 64], normalize=True) for i in range(0, len(images), 64)])
    return [names[i] for i in (pred @ classes.T).argmax(1).tolist()]


def read_manifests(runs: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """The runs' manifests, concatenated and split by subject."""
    table = pd.concat([read_manifest(run) for run in runs], ignore_index=True)
    return {str(s): rows for s, rows in table.groupby("subject", sort=False)}


@dataclass
class SubjectScores:
    """A subject's natural-image reference (for standardising) and its scored generated images."""

    images: pd.DataFrame  # one row per generated image, pred_*/true_* standardised
    natural: pd.DataFrame  # one row per natural test image: measured_*, pred_*, true_* standardised, category


def score_subject(
    subject: str,
    table: pd.DataFrame,
    responses: str | Path,
    stimuli: str | Path,
    encoder_dir: str | Path,
    cfg: DiveConfig,
    clip: ClipModel | None,
    truth: TruthFn | None = None,
    kit_dir: str | Path | None = None,
) -> SubjectScores:
    """Score one subject's generated images (``table``: its runs' manifests, `read_manifests`) and natural test
    images (see the module docstring)."""
    r = read_responses(responses)
    masks = [roi_mask(r.voxels, roi, cfg.hemi, responses) for roi in cfg.rois]
    weights = roi_matrix(masks)
    encoder = load_image_encoder(encoder_dir, kit_dir=kit_dir)
    natural_images = images_to_tensor(Stimuli(stimuli).images(r.test.nsd_ids))
    table = table.reset_index(drop=True)
    generated = images_to_tensor(np.stack([load_png(Path(p)) for p in table["image"]]))
    natural = pd.DataFrame({"subject": subject, "nsd_id": r.test.nsd_ids})
    measured = roi_means(torch.from_numpy(r.test.betas), weights).numpy()
    sets = {"pred": encoder}
    if truth is not None:
        sets["true"] = truth(subject, responses)
    for kind, model in sets.items():
        ref = _activations(model, natural_images, weights)
        mean, sd = ref.mean(0), ref.std(0)
        gen = (
            table[[f"pred_{roi}" for roi in cfg.rois]].to_numpy()
            if kind == "pred"
            else _activations(model, generated, weights)
        )
        for k, roi in enumerate(cfg.rois):
            natural[f"{kind}_{roi}"] = (ref[:, k] - mean[k]) / sd[k]
            table[f"{kind}_{roi}"] = (gen[:, k] - mean[k]) / sd[k]
    for k, roi in enumerate(cfg.rois):
        natural[f"measured_{roi}"] = measured[:, k]
    if clip is not None and cfg.categories:
        table["category"] = zero_shot(clip, generated, cfg.categories)
        natural["category"] = zero_shot(clip, natural_images, cfg.categories)
    return SubjectScores(table, natural)


def _row(subject: str, target: str, name: str, gamma: float, rows: pd.DataFrame, cfg: DiveConfig) -> dict:
    out = {"subject": subject, "target": target, "set": name, "gamma": gamma, "n": len(rows)}
    for kind in ("pred", "true"):
        for roi in cfg.rois:
            if f"{kind}_{roi}" in rows:
                out[f"{kind}_{roi}"] = float(rows[f"{kind}_{roi}"].mean()) if len(rows) else np.nan
    if "category" in rows and target in cfg.categories:
        out["zero_shot"] = float((rows["category"] == target).mean()) if len(rows) else np.nan
    return out


def summarize(scores: dict[str, SubjectScores], cfg: DiveConfig) -> pd.DataFrame:
    """One row per subject × target × image set × γ (see the module docstring)."""
    rows = []
    for subject, s in scores.items():
        images = s.images
        base = images[images["target"] == UNGUIDED].set_index("seed")
        for target in cfg.rois:
            own = images[images["target"] == target]
            base_all = base.reset_index()
            rows.append(_row(subject, target, "unguided", 0.0, base_all, cfg))
            for gamma, at in own.groupby("gamma"):
                rows.append(_row(subject, target, "guided", gamma, at, cfg))
            main = own[(own["gamma"] == own["gamma"].max()) & own["kept"].astype(bool)]
            rows.append(_row(subject, target, "kept", main["gamma"].max(), main, cfg))
            rows.append(_row(subject, target, "unguided_same_seeds", 0.0, base.loc[main["seed"]].reset_index(), cfg))
            rows.append(_row(subject, target, "natural_all", np.nan, s.natural, cfg))
            top = s.natural.nlargest(max(1, round(TOP_NATURAL * len(s.natural))), f"measured_{target}")
            rows.append(_row(subject, target, "natural_top10", np.nan, top, cfg))
    return pd.DataFrame(rows)


def cross_activation(summary: pd.DataFrame, cfg: DiveConfig, kind: str, image_set: str = "kept") -> pd.DataFrame:
    """Targets × ROIs: mean standardised ``kind`` (pred/true) activation of ROI j for ``image_set`` images made for
    ROI k, averaged over subjects."""
    rows = summary[summary["set"] == image_set]
    return rows.groupby("target")[[f"{kind}_{roi}" for roi in cfg.rois]].mean().reindex(list(cfg.rois))


def must_shows(summary: pd.DataFrame, cfg: DiveConfig) -> pd.DataFrame:
    """Per target (mean over subjects): kept minus same-seed unguided activation of the target, whether the target
    is the row maximum of the cross-activation matrix, and whether predicted activation rises over γ."""
    out = []
    kinds = [k for k in ("pred", "true") if f"{k}_{cfg.rois[0]}" in summary]
    for target in cfg.rois:
        rows = summary[summary["target"] == target]
        row = {"target": target}
        for kind in kinds:
            col = f"{kind}_{target}"
            kept = rows.loc[rows["set"] == "kept", col].mean()
            row[f"{kind}_gain_sd"] = kept - rows.loc[rows["set"] == "unguided_same_seeds", col].mean()
            row[f"{kind}_row_max"] = bool(cross_activation(summary, cfg, kind).loc[target].idxmax() == col)
        curve = rows[rows["set"].isin(["unguided", "guided"])].groupby(["subject", "gamma"])[f"pred_{target}"].mean()
        by_gamma = curve.groupby("gamma").mean().sort_index()
        row["pred_monotonic_in_gamma"] = bool((np.diff(by_gamma.to_numpy()) > 0).all())
        out.append(row)
    return pd.DataFrame(out)
