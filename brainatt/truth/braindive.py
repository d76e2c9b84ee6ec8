"""Brain-guided images scored by nsd-synth's ground-truth brain: any image gets each subject's true response."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brainatt.braindive.evaluate import TruthFn
from brainatt.contracts.ground_truth import true_columns
from brainatt.contracts.responses import read_responses
from brainatt.synth.world import WorldSpec, load_brain


class WorldBrain(nn.Module):
    """A ground-truth brain seen through the world's images: inputs resized to the world's image size, outputs
    ``(B, V_all)`` restricted to chosen voxel columns ``(B, V)``."""

    def __init__(self, inner: nn.Module, columns: list[int], size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = size
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bicubic", antialias=True).clamp(0, 1)
        return self.inner(images).index_select(1, self.columns)


def true_brains(ground_truth: str | Path) -> TruthFn:
    """(subject, its responses.h5) → its ground-truth brain, images ``(B, 3, H, W)`` in [0, 1] → noise-free
    responses ``(B, V)`` of the responses file's voxels, matched by voxel index; images of another size are
    resized to the world's."""
    ground_truth = Path(ground_truth)

    def brain(subject: str, responses: str | Path) -> nn.Module:
        ijk = read_responses(responses, betas=False).voxels.ijk
        columns = true_columns(ground_truth / f"{subject}.h5", ijk, responses).tolist()
        size = WorldSpec.from_config(json.loads((ground_truth / "world.json").read_text())["spec"]).image_size
        return WorldBrain(load_brain(ground_truth, subject), columns, size).eval()

    return brain
