"""One BrainDiVE run: images guided toward one subject's ROI, re-ranked, with a manifest row per image.

``generate`` writes ``{out}/images/*.png`` and ``{out}/manifest.tsv``. The target ``unguided`` is the baseline:
γ = 0 for the same seeds, made once per subject and shared by every ROI (with γ = 0 the sampler reproduces the
unguided images exactly, so the ROI does not matter). A target ROI gets γ, and with ``gamma_sweep`` also γ/2.
Each image's row holds its seed, subject, target, γ, steps, scheduler, encoder, the predicted mean activation
of every configured ROI, and ``kept``: the top ``keep`` fraction of its (target, γ) set by predicted target
activation (the paper's re-ranking, top 20%).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from brainatt.braindive.objective import RoiObjective, roi_mask, roi_matrix, roi_means
from brainatt.contracts.encoding import read_model_info
from brainatt.contracts.responses import read_responses
from brainatt.encoding.encoders import load_image_encoder
from brainatt.io import BrainattError, atomic_path
from brainatt.models.diffusion import GUIDE_GRADIENTS, SCHEDULERS, sample
from brainatt.models.loading import load_clip, load_diffusion
from brainatt.models.spec import ModelSpec

log = logging.getLogger(__name__)
UNGUIDED = "unguided"
MANIFEST = "manifest.tsv"


@dataclass(frozen=True)
class DiveConfig:
    """The ``braindive`` section of the config (the schema documents each key)."""

    encoder: str = "ridge_pooled"
    rois: tuple[str, ...] = ("faces", "bodies", "places", "words", "food")
    hemi: str = "both"
    n_seeds: int = 10
    first_seed: int = 0
    gamma: float = 100.0
    gamma_sweep: bool = True
    steps: int = 20
    scheduler: str = "dpm++2m"
    reuse_eps: bool = True
    guide_grad: str = "unet"
    guide_window: tuple[float, float] = (0.0, 1.0)
    prompt: str = ""
    cfg_scale: float = 1.0
    contrast: float = 0.0
    max_shift: int = 4
    keep: float = 0.2
    batch: int = 10
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> DiveConfig:
        """The section as the config holds it (unknown keys raise; ``subjects`` is a workflow setting)."""
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = {k: v for k, v in cfg.items() if k != "subjects"}  # which subjects the workflow runs
        unknown = set(cfg) - known
        if unknown:
            raise BrainattError(f"braindive: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        cfg = {k: tuple(v) if k in ("rois", "guide_window") else v for k, v in cfg.items()}
        out = cls(**cfg)
        if out.scheduler not in SCHEDULERS:
            raise BrainattError(f"braindive.scheduler {out.scheduler!r} unknown: choose from {', '.join(SCHEDULERS)}")
        if out.guide_grad not in GUIDE_GRADIENTS:
            raise BrainattError(
                f"braindive.guide_grad {out.guide_grad!r} unknown: choose from {', '.join(GUIDE_GRADIENTS)}"
            )
        if not 0 < out.keep <= 1:
            raise BrainattError(f"braindive.keep must be in (0, 1], got {out.keep}")
        return out

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.n_seeds))

    def gammas(self, target: str) -> list[float]:
        """The guidance scales a target is sampled at (the baseline: 0 only)."""
        if target == UNGUIDED:
            return [0.0]
        return [self.gamma / 2, self.gamma] if self.gamma_sweep else [self.gamma]


def image_name(target: str, gamma: float, seed: int) -> str:
    return f"{target}_g{gamma:g}_s{seed}.png"


def save_png(image: torch.Tensor, path: Path) -> None:
    """A ``(3, H, W)`` image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def load_png(path: Path) -> np.ndarray:
    """An image written by `save_png`, ``(H, W, 3)`` uint8."""
    from PIL import Image

    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
        raise BrainattError(f"{path}: unreadable image ({e}): rerun the braindive rule that wrote it") from None


def rerank(table: pd.DataFrame, keep: float) -> pd.Series:
    """Whether each guided image is in the top ``keep`` fraction of its (target, γ) set by predicted target
    activation (at least one image per set); baseline images are never kept."""
    kept = pd.Series(False, index=table.index)
    for (target, _), rows in table.groupby(["target", "gamma"]):
        if target == UNGUIDED:
            continue
        n = max(1, round(keep * len(rows)))
        kept[rows[f"pred_{target}"].nlargest(n).index] = True
    return kept


def generate(
    encoder_dir: str | Path,
    responses: str | Path,
    out: str | Path,
    subject: str,
    target: str,
    cfg: DiveConfig,
    diffusion: ModelSpec,
    clip: ModelSpec | None = None,
    kit_dir: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Sample ``cfg.n_seeds`` images per γ for ``target`` (an ROI of ``cfg.rois`` or ``unguided``) → ``out``."""
    if target != UNGUIDED and target not in cfg.rois:
        raise BrainattError(f"braindive target {target!r} is not in braindive.rois {list(cfg.rois)} nor {UNGUIDED!r}")
    t0 = time.time()
    voxels = read_responses(responses, betas=False).voxels
    masks = [roi_mask(voxels, roi, cfg.hemi, responses) for roi in cfg.rois]
    encoder = load_image_encoder(encoder_dir, device=device, kit_dir=kit_dir)
    n_pred = read_model_info(encoder_dir)["n_voxels"]
    if n_pred != voxels.n:
        raise BrainattError(
            f"{encoder_dir}: predicts {n_pred} voxels but {responses} has {voxels.n}: use the subject's encoder"
        )
    model = load_diffusion(diffusion, device=device, kit_dir=kit_dir)
    clip_model = load_clip(clip, device=device, kit_dir=kit_dir) if cfg.prompt and clip is not None else None
    size = int(model.info.get("image_size", 0)) or None
    guide = None
    if target != UNGUIDED:
        k = cfg.rois.index(target)
        others = np.any([m for j, m in enumerate(masks) if j != k], axis=0) if len(masks) > 1 else None
        guide = RoiObjective(encoder, masks[k], others, cfg.contrast, cfg.max_shift, seed=cfg.first_seed)
    weights = roi_matrix(masks)
    rows = []
    with atomic_path(out, directory=True) as tmp:
        (tmp / "images").mkdir()
        for gamma in cfg.gammas(target):
            for i in range(0, cfg.n_seeds, cfg.batch):
                seeds = cfg.seeds[i : i + cfg.batch]
                images = sample(
                    model,
                    [cfg.prompt] * len(seeds) if cfg.prompt else None,
                    clip_model,
                    steps=cfg.steps,
                    guidance_scale=cfg.cfg_scale,
                    seeds=seeds,
                    image_size=size,
                    guide=guide,
                    guide_scale=gamma,
                    scheduler=cfg.scheduler,
                    reuse_eps=cfg.reuse_eps,
                    guide_grad=cfg.guide_grad,
                    guide_window=cfg.guide_window,
                ).cpu()
                with torch.no_grad():
                    pred = roi_means(encoder(images.to(device)), weights).cpu().numpy()
                for image, seed, p in zip(images, seeds, pred, strict=True):
                    name = image_name(target, gamma, seed)
                    save_png(image, tmp / "images" / name)
                    row = {"subject": subject, "target": target, "hemi": cfg.hemi, "gamma": gamma, "seed": seed}
                    row |= {"steps": cfg.steps, "scheduler": cfg.scheduler, "encoder": cfg.encoder}
                    row |= {"prompt": cfg.prompt, "image": f"images/{name}"}
                    rows.append(row | {f"pred_{roi}": float(v) for roi, v in zip(cfg.rois, p, strict=True)})
            log.info("%s %s γ=%g: %d images (%.0f s so far)", subject, target, gamma, cfg.n_seeds, time.time() - t0)
        table = pd.DataFrame(rows)
        table.insert(5, "kept", rerank(table, cfg.keep))
        table.to_csv(tmp / MANIFEST, sep="\t", index=False, float_format="%.5f")
    log.info("%s %s: done in %.0f s", subject, target, time.time() - t0)
    return Path(out)


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """A run's manifest, with image paths made absolute."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise BrainattError(f"{path}: missing: rerun the braindive rule for this subject and target")
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    table["image"] = [str(Path(folder) / p) for p in table["image"]]
    return table
