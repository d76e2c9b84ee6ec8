"""Factorized space × feature readout (fwRF / Klindt-style "static receptive field" baseline).

Each spatial map (one per ROI query, or one per voxel) is a learned logit map over the token grid; its softmax
pools the tokens into one feature vector, which the voxel reads with its own weights (`VoxelReadout`). The
routing is fixed — the same place for every image — which is what the attention-routing encoder relaxes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainatt.encoding.readout import VoxelReadout


class FactorizedEncoder(nn.Module):
    """Tokens ``(B, gh, gw, C)`` → responses ``(B, V)`` through static spatial maps.

    ``voxel_map`` gives each voxel's spatial map: its ROI query (maps shared within an ROI) or ``arange(V)``
    (a map per voxel).
    """

    def __init__(self, voxel_map: np.ndarray, n_maps: int, grid: tuple[int, int], width: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.logits = nn.Parameter(torch.zeros(n_maps, grid[0] * grid[1]))
        self.readout = VoxelReadout(voxel_map, width)

    def spatial_maps(self) -> torch.Tensor:
        """``(n_maps, gh, gw)``, each summing to 1."""
        return torch.softmax(self.logits, dim=1).unflatten(1, self.grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("ms,bsc->bmc", torch.softmax(self.logits, dim=1), tokens.flatten(1, 2).float())
        return self.readout(pooled)
