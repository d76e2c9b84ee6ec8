"""BrainSCUBA's generated images scored by nsd-synth's ground-truth brain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from brainatt.contracts.ground_truth import true_columns
from brainatt.synth.world import WorldSpec, load_brain
from brainatt.truth.braindive import WorldBrain


def true_response_fn(ground_truth: str | Path, subject: str, ijk: np.ndarray | None):
    """A function images ``(B, 3, H, W)`` in [0, 1] → noise-free responses ``(B, V)`` of the voxels at ``ijk``
    (a responses file's voxels, matched to the ground truth by voxel index); images of another size are resized to
    the world's."""
    ground_truth = Path(ground_truth)
    cols = true_columns(ground_truth / f"{subject}.h5", ijk, subject)
    size = WorldSpec.from_config(json.loads((ground_truth / "world.json").read_text())["spec"]).image_size
    brain = WorldBrain(load_brain(ground_truth, subject), np.asarray(cols).tolist(), size).eval()

    @torch.no_grad()
    def respond(images: torch.Tensor) -> np.ndarray:
        return brain(images.float()).numpy()

    return respond
