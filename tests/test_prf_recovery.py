"""Per-voxel pRF recovery (`brainatt.truth.prf`): occlusion finds known receptive fields, the baselines follow
their definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainatt.io import BrainattError
from brainatt.truth.prf import (
    name_only_centre,
    name_only_map,
    name_only_region,
    occlusion_sensitivity,
    recovery_summary,
    retinotopic_voxels,
    roi_mean_centres,
    sensitivity_centres,
)

GRID = (8, 8)


def test_name_only_region_is_textbook_retinotopy_from_the_label_alone() -> None:
    assert name_only_region("lh.V1d") == (0.5, 1.0, 0.5, 1.0)  # right half (contralateral), lower quarter
    assert name_only_region("rh.V2v") == (0.0, 0.5, 0.0, 0.5)  # left half, upper quarter
    assert name_only_region("rh.V3d") == (0.0, 0.5, 0.5, 1.0)
    assert name_only_region("lh.hV4") == (0.5, 1.0, 0.0, 1.0)  # the whole contralateral hemifield
    for other in ("lh.FFA-1", "rh.rest", "V1v", "lh.V4v", "lh.V1"):  # category, rest, no hemisphere, not an area
        assert name_only_region(other) == (0.25, 0.75, 0.25, 0.75)
    assert name_only_centre("lh.V1d") == (0.75, 0.75) and name_only_centre("rh.hV4") == (0.25, 0.5)
    m = name_only_map("lh.V1d", GRID)
    assert m.sum() == pytest.approx(1.0) and (m[4:, 4:] == 1 / 16).all() and m[:4].sum() == m[:, :4].sum() == 0
    central = name_only_map("lh.FFA-1", GRID)
    assert (central[2:6, 2:6] == 1 / 16).all() and central.sum() == pytest.approx(1.0)


class ToyEncoder(nn.Module):
    """Known receptive fields: voxel v reads Σ_p m_v(p) w_v·x_p from two token layers, m_v a Gaussian bump at
    ``centres[v]`` (σ 0.1 image widths, about the demo world's median pRF size), plus a term every patch feeds (the
    tokens' mean over the grid), the pooled embedding and a saturating nonlinearity."""

    def __init__(self, centres: np.ndarray, width: int, sigma: float = 0.1, context: float = 0.5) -> None:
        super().__init__()
        gh, gw = GRID
        y, x = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
        d2 = (x[None] - centres[:, 0, None, None]) ** 2 + (y[None] - centres[:, 1, None, None]) ** 2
        self.bumps = torch.tensor(np.exp(-d2 / (2 * sigma**2)), dtype=torch.float32)  # (V, gh, gw)
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(len(centres), width, generator=g)
        self.u = torch.randn(len(centres), width, generator=g) * context

    def forward(self, features: dict) -> torch.Tensor:
        x = features[-3] + features[-1]  # (B, gh, gw, C)
        local = torch.einsum("vhw,bhwc,vc->bv", self.bumps, x, self.w)
        return torch.tanh(0.3 * (local + x.mean((1, 2)) @ self.u.T)) + features["pooled"][:, :1]


def test_occlusion_recovers_known_receptive_field_centres() -> None:
    rng = np.random.default_rng(1)
    centres = rng.uniform(0.25, 0.75, (12, 2))  # off the cell centres, away from the edges that would clip a bump
    tokens = {k: torch.from_numpy(rng.standard_normal((200, *GRID, 6)).astype(np.float16)) for k in (-3, -1)}
    features = {**tokens, "pooled": torch.randn(200, 4)}
    sensitivity = occlusion_sensitivity(ToyEncoder(centres, 6), features, batch=64)
    assert sensitivity.shape == (12, *GRID) and (sensitivity >= 0).all()
    found = sensitivity_centres(sensitivity)
    error = np.hypot(*(found - centres).T)
    nearest_cell = np.hypot(*((np.floor(centres * 8) + 0.5) / 8 - centres).T)
    assert error.max() < 0.03 and np.median(error) < np.median(nearest_cell) / 2  # finer than the grid
    # a voxel reading one patch only is placed on that patch's centre; one reading none at the image centre
    one = np.zeros((2, *GRID))
    one[0, 2, 5] = 3.0
    np.testing.assert_allclose(sensitivity_centres(one), [[5.5 / 8, 2.5 / 8], [0.5, 0.5]])


def test_occlusion_is_the_response_variance_a_patch_carries_in_a_linear_readout() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((50, 2, 2, 3))).float()
    w = torch.from_numpy(rng.standard_normal((2, 2, 3))).float()

    class Linear(nn.Module):
        def forward(self, features: dict) -> torch.Tensor:
            return torch.einsum("bhwc,hwc->b", features[0], w)[:, None]

    sensitivity = occlusion_sensitivity(Linear(), {0: x})[0]
    centred = x - x.mean(0)
    expected = torch.einsum("bhwc,hwc->bhw", centred, w).pow(2).mean(0)
    np.testing.assert_allclose(sensitivity, expected.numpy(), rtol=1e-5)
    with pytest.raises(BrainattError, match="patch tokens"):
        occlusion_sensitivity(Linear(), {"pooled": torch.zeros(3, 4)})


def test_scored_voxels_and_roi_mean_placement_follow_the_generating_kinds() -> None:
    kind = np.array(["V1v", "hV4", "face", "V2d", "", "face:mixed", "V1v"])
    nc = np.array([30, 25, 50, 10, 40, 40, 20])
    assert retinotopic_voxels(kind, nc).tolist() == [0, 1, 6]  # V2d's NC is under 20 %
    labels = np.array(["lh.V1v", "lh.V1v", "lh.FFA-1", "lh.V1v", "lh.rest", "lh.FFA-1", "rh.V1v"])
    prf = np.array([[0.1, 0.2], [0.3, 0.4], [0.9, 0.9], [0.5, 0.6], [0.0, 0.0], [0.7, 0.7], [0.8, 0.1]])
    placed = roi_mean_centres(labels, kind, prf)
    np.testing.assert_allclose(placed[0], [0.3, 0.4])  # lh.V1v's retinotopic voxels 0, 1, 3, not their labels'
    np.testing.assert_allclose(placed[6], [0.8, 0.1])
    np.testing.assert_allclose(placed[2], prf[[0, 1, 3, 6]].mean(0))  # no retinotopic voxel: all of them


def test_recovery_summary_counts_the_voxels_closer_than_each_baseline() -> None:
    voxels = pd.DataFrame(
        {
            "subject": ["subj01"] * 3 + ["subj02"],
            "encoder": "transformer",
            "label": ["lh.V1v", "lh.V1v", "rh.V2d", "lh.V1v"],
            "error": [0.01, 0.2, 0.05, 0.02],
            "error_name_only": [0.1, 0.1, 0.1, 0.1],
            "error_roi_mean": [0.0, 0.3, 0.1, 0.01],
        }
    )
    table = recovery_summary(voxels).set_index(["subject", "label"])
    assert table.loc[("subj01", "lh.V1v"), "closer_than_name_only"] == 0.5
    assert table.loc[("subj01", "all"), "n_voxels"] == 3
    assert table.loc[("subj01", "all"), "median_error"] == pytest.approx(0.05)
    assert table.loc[("all", "all"), "closer_than_name_only"] == 0.75
    assert table.loc[("all", "all"), "closer_than_roi_mean"] == 0.5


def test_a_run_without_scored_voxels_still_has_its_rows() -> None:
    columns = ["subject", "encoder", "label", "error", "error_name_only", "error_roi_mean"]
    table = recovery_summary(pd.DataFrame(columns=columns), [("transformer", "subj01")])
    assert table[["subject", "label", "n_voxels"]].values.tolist() == [["subj01", "all", 0], ["all", "all", 0]]
    assert table["median_error"].isna().all()
