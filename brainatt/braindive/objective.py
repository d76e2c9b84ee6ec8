"""What brain-guided diffusion maximises: a saved encoder's mean predicted response over a target ROI.

BrainDiVE (Luo et al. 2023) scores the predicted clean image at each denoising step with a frozen encoder and
follows the gradient of the target ROI's mean predicted response. Here the encoder is the encoding stage's saved
model, loaded live as a differentiable image → voxel module (`brainatt.encoding.encoders.load_image_encoder`,
never refitted): by default ``ridge_pooled`` (ridge on the backbone's pooled embedding, the paper's linear probe
on the CLIP image embedding), or the attention-routing ``transformer``.

ROIs are named as in the config: a category atlas by its short name (``faces`` = every voxel labelled in
``floc-faces``), an atlas by its full name, or one labelled region (``FFA-1``), restricted to a hemisphere
(``lh``, ``rh`` or ``both``). An ROI's mean runs over that ROI's voxels only, so voxels outside it, whatever
their predictions, never enter the objective (the reference code divided by voxels it never predicted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainatt.contracts.responses import Voxels
from brainatt.io import BrainattError

HEMISPHERES = ("lh", "rh", "both")


def roi_mask(voxels: Voxels, roi: str, hemi: str = "both", where: str | Path = "responses.h5") -> np.ndarray:
    """Boolean ``(V,)`` mask of ``roi``'s voxels in ``hemi`` (see the module docstring for the names)."""
    if hemi not in HEMISPHERES:
        raise BrainattError(f"hemisphere {hemi!r} unknown: choose from {', '.join(HEMISPHERES)}")
    mask = None
    for atlas in (f"floc-{roi}", roi):
        if atlas in voxels.rois:
            mask = voxels.rois[atlas] > 0
            break
    if mask is None:
        for atlas, names in voxels.roi_names.items():
            codes = [code for code, name in names.items() if name == roi]
            if codes and atlas in voxels.rois:
                mask = np.isin(voxels.rois[atlas], codes)
                break
    if mask is None:
        labelled = sorted({n for names in voxels.roi_names.values() for n in names.values()})
        atlases = sorted(a.removeprefix("floc-") for a in voxels.rois)
        raise BrainattError(
            f"{where}: no ROI {roi!r}: name an atlas ({', '.join(atlases)}) or a region ({', '.join(labelled)})"
        )
    if hemi != "both":
        mask = mask & (np.asarray(voxels.hemi).astype(str) == hemi)
    if not mask.any():
        raise BrainattError(f"{where}: ROI {roi!r} ({hemi}) has no voxels: choose another ROI or hemisphere")
    return mask


def roi_matrix(masks: list[np.ndarray]) -> torch.Tensor:
    """``(K, V)`` averaging weights: row k is 1/|ROI k| on ROI k's voxels and 0 elsewhere."""
    m = torch.from_numpy(np.stack(masks).astype(np.float32))
    return m / m.sum(1, keepdim=True)


def roi_means(responses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-image mean response of each ROI: ``(B, V)`` responses, ``(K, V)`` `roi_matrix` → ``(B, K)``."""
    return responses @ weights.to(responses).T


def shift_images(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift the batch by one random offset of up to ``max_shift`` px each way (edges replicated); differentiable."""
    if max_shift <= 0:
        return images
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    h, w = images.shape[-2:]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    return padded[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


class RoiObjective(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] → per-image objective ``(B,)``: the target ROI's mean predicted response,
    minus ``contrast`` × the mean over ``others`` when given.

    ``encoder`` is a frozen image → ``(B, V)`` module; resizing and normalisation happen inside it, so the
    gradient reaches the pixels. ``max_shift`` > 0 shifts each scored batch by a random offset (from a generator
    seeded with ``seed``) so that guidance cannot exploit one pixel alignment of the encoder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        target: np.ndarray,
        others: np.ndarray | None = None,
        contrast: float = 0.0,
        max_shift: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        rows = [target] if others is None or not contrast else [target, others & ~target]
        self.register_buffer("weights", roi_matrix(rows))
        self.contrast = contrast if len(rows) == 2 else 0.0
        self.max_shift = max_shift
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        means = roi_means(self.encoder(shift_images(images, self.max_shift, self.generator)), self.weights)
        return means[:, 0] - self.contrast * means[:, 1] if self.contrast else means[:, 0]
