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
        """``(B, gh, gw, C)`` → ``(B, V)``, summed in whichever order has the smaller intermediate."""
        if self.readout.grouped or self.logits.shape[1] >= tokens.shape[-1]:
            return self.pool_first(tokens)
        return self.read_first(tokens)

    def pool_first(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each map pools the tokens, then each voxel reads its map's vector (`VoxelReadout`): (B, n_maps, C)."""
        maps, x = torch.softmax(self.logits, dim=1), tokens.flatten(1, 2).float()  # (n_maps, S), (B, S, C)
        return self.readout(torch.einsum("ms,bsc->bmc", maps, x))

    def read_first(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each voxel's feature weights read every token in one matrix product, then its map pools those,
        ŷ_v = Σ_s m_v(s) w_v·x_s: the same sum with a (B, S, V) intermediate, smaller than pooling first's (B, V, C)
        when there is a map per voxel (ROI maps are grouped) and fewer tokens than channels (bench/RESULTS.md
        "readout")."""
        maps, x = torch.softmax(self.logits, dim=1), tokens.flatten(1, 2).float()
        read = x @ self.readout.weight.T
        return (read * maps[self.readout.voxel_query].T).sum(1) + self.readout.bias
