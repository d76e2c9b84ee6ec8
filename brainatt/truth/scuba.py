"""BrainSCUBA's generated images scored by nsd-synth's ground-truth brain."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from brainatt.io import BrainattError
from brainatt.synth.world import load_brain


def true_response_fn(ground_truth: str | Path, subject: str, ijk: np.ndarray | None):
    """A function images ``(B, 3, H, W)`` in [0, 1] → noise-free responses ``(B, V)`` of the voxels at ``ijk``
    (a responses file's voxels, matched to the ground truth by voxel index)."""
    path = Path(ground_truth) / f"{subject}.h5"
    if not path.exists():
        raise BrainattError(f"{path}: ground-truth file missing (only nsd-synth worlds have one)")
    if ijk is None:
        raise BrainattError(f"{subject}: surface data: the ground truth is matched to volume voxels (NSD layout only)")
    with h5py.File(path, "r") as f:
        lookup = {tuple(v): i for i, v in enumerate(f["ijk"][()])}
    cols = np.array([lookup.get(tuple(v), -1) for v in ijk])
    if (cols < 0).any():
        raise BrainattError(f"{path}: {int((cols < 0).sum())} voxels are missing from the ground truth: wrong subject?")
    brain = load_brain(Path(ground_truth), subject)

    @torch.no_grad()
    def respond(images: torch.Tensor) -> np.ndarray:
        return brain(images.float()).numpy()[:, cols]

    return respond
