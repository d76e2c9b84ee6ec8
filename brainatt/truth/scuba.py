"""BrainSCUBA's generated images scored by nsd-synth's ground-truth brain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainatt.contracts.ground_truth import true_columns
from brainatt.synth.world import load_brain


def true_response_fn(ground_truth: str | Path, subject: str, ijk: np.ndarray | None):
    """A function images ``(B, 3, H, W)`` in [0, 1] → noise-free responses ``(B, V)`` of the voxels at ``ijk``
    (a responses file's voxels, matched to the ground truth by voxel index)."""
    cols = true_columns(Path(ground_truth) / f"{subject}.h5", ijk, subject)
    brain = load_brain(Path(ground_truth), subject)

    @torch.no_grad()
    def respond(images: torch.Tensor) -> np.ndarray:
        return brain(images.float()).numpy()[:, cols]

    return respond
