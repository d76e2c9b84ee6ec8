"""The ground-truth brain of nsd-synth: an image-computable, differentiable torch module per subject.

Two shared stages make the world's visual system (`VisualSystem`):
- *low-level*: oriented contrast energy at two scales plus two colour-opponent channels, pooled to a grid;
- *category maps*: the frozen `CategoryDetector`'s probability of each category per grid cell.

Each subject has a `VoxelReadout` with per-voxel generating parameters:
- retinotopic voxels: a Gaussian pRF over the energy channels, compressive exponent 0.5 (CSS model), placed by a
  cortical map (contralateral quarter-fields, eccentricity and polar-angle gradients, see `retinotopic_map`);
- category voxels: log-sum-exp pooling of their category's map under a broad spatial preference, so they respond
  to the category anywhere with a preferred region (position tolerance), plus weak secondary tuning;
- unlabelled voxels: a weak mix of both.
The readout standardises each voxel over the world's images, so the noise-free signal has unit variance and a
voxel's ncsnr is the inverse of its noise standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from brainatt.synth.detector import STRIDE, load_detector
from brainatt.synth.scenes import CATEGORIES

N_ORIENT = 4
N_ENERGY = 2 * N_ORIENT + 2  # two scales × orientations, plus two colour-opponent channels
LSE_BETA = 6.0


def _gabor_bank(size: int, wavelength: float) -> torch.Tensor:
    """Even/odd Gabor pairs at N_ORIENT orientations: ``(2·N_ORIENT, 1, size, size)``, zero-mean, unit-norm."""
    r = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - r, torch.arange(size) - r, indexing="ij")
    sigma = wavelength * 0.5
    filters = []
    for k in range(N_ORIENT):
        theta = math.pi * k / N_ORIENT
        u = xx * math.cos(theta) + yy * math.sin(theta)
        env = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for phase in (torch.cos, torch.sin):
            f = env * phase(2 * math.pi * u / wavelength)
            f = f - f.mean()
            filters.append(f / f.norm())
    return torch.stack(filters)[:, None].float()


class VisualSystem(nn.Module):
    """Images ``(B,3,H,W)`` in [0,1] → energy ``(B,N_ENERGY,G,G)`` and category maps ``(B,K,G,G)``, G = H/4."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = load_detector()
        self.register_buffer("fine", _gabor_bank(7, 4.0), persistent=False)
        self.register_buffer("coarse", _gabor_bank(13, 8.0), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
        gray = 0.299 * r + 0.587 * g + 0.114 * b
        energies = []
        for bank in (self.fine, self.coarse):
            resp = nn.functional.conv2d(gray, bank, padding=bank.shape[-1] // 2)
            pair = resp.unflatten(1, (N_ORIENT, 2))
            energies.append(torch.sqrt((pair**2).sum(2) + 1e-6))
        opponent = torch.cat([(r - g).abs(), (0.5 * (r + g) - b).abs()], 1)
        energy = torch.cat([*energies, opponent], 1)
        energy = nn.functional.avg_pool2d(energy, STRIDE)
        cats = torch.sigmoid(self.detector(images))
        return energy, cats


@dataclass
class VoxelParams:
    """Per-voxel generating parameters (numpy, shape (V,) or (V,k)); positions are image fractions."""

    family: np.ndarray  # 0 unlabelled, 1 retinotopic, 2 category
    prf_x: np.ndarray
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    energy_w: np.ndarray  # (V, N_ENERGY)
    pref_x: np.ndarray
    pref_y: np.ndarray
    pref_sigma: np.ndarray
    category_w: np.ndarray  # (V, K)
    low_gain: np.ndarray
    category_gain: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


class VoxelReadout(nn.Module):
    """A subject's voxels: visual-system features → standardised noise-free responses ``(B,V)``."""

    def __init__(self, params: VoxelParams, grid: int) -> None:
        super().__init__()
        centers = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        cx, cy = cx.reshape(-1), cy.reshape(-1)

        def gaussian(x: np.ndarray, y: np.ndarray, s: np.ndarray) -> torch.Tensor:
            x, y, s = (torch.as_tensor(a, dtype=torch.float64)[:, None] for a in (x, y, s))
            g = torch.exp(-((cx - x) ** 2 + (cy - y) ** 2) / (2 * s**2))
            return (g / g.sum(1, keepdim=True)).float()  # (V, G²), sums to 1

        self.register_buffer("prf", gaussian(params.prf_x, params.prf_y, params.prf_sigma))
        self.register_buffer("pref", gaussian(params.pref_x, params.pref_y, params.pref_sigma))
        self.register_buffer("energy_w", torch.as_tensor(params.energy_w, dtype=torch.float32))
        self.register_buffer("category_w", torch.as_tensor(params.category_w, dtype=torch.float32))
        self.register_buffer("low_gain", torch.as_tensor(params.low_gain, dtype=torch.float32))
        self.register_buffer("category_gain", torch.as_tensor(params.category_gain, dtype=torch.float32))
        self.register_buffer("mean", torch.zeros(len(params.family)))
        self.register_buffer("std", torch.ones(len(params.family)))

    def raw(self, energy: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        e = energy.flatten(2) @ self.prf.T  # (B, C, V): pRF-weighted energy per channel
        low = torch.sqrt((e * self.energy_w.T).sum(1) + 1e-4)
        pooled = torch.log(torch.exp(LSE_BETA * cats.flatten(2)) @ self.pref.T) / LSE_BETA  # (B, K, V)
        cat = (pooled * self.category_w.T).sum(1)
        return self.low_gain * low + self.category_gain * cat

    def pooling_weights(self, cats: torch.Tensor, category: int, voxels: torch.Tensor) -> torch.Tensor:
        """Where the voxels' pooling of one category map looks: ``(B, len(voxels), G²)``, each row sums to 1.

        Log-sum-exp pooling is a softmax-weighted average in disguise: the derivative of the pooled value with
        respect to each grid cell's probability is softmax(β·c + log pref). This is the truth's own attention
        map, the reference for an encoder's.
        """
        logits = LSE_BETA * cats[:, category].flatten(1)[:, None, :] + torch.log(self.pref[voxels])[None]
        return torch.softmax(logits, dim=-1)

    def forward(self, energy: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        return (self.raw(energy, cats) - self.mean) / self.std

    @torch.no_grad()
    def calibrate(self, energy: torch.Tensor, cats: torch.Tensor) -> None:
        """Fix each voxel's mean and standard deviation over the given (the world's) images."""
        r = self.raw(energy, cats).double()
        self.mean.copy_(r.mean(0).float())
        self.std.copy_(r.std(0).clamp(min=1e-8).float())


class SynthBrain(nn.Module):
    """End-to-end ground-truth brain of one subject: images ``(B,3,H,W)`` in [0,1] → responses ``(B,V)``."""

    def __init__(self, visual: VisualSystem, readout: VoxelReadout) -> None:
        super().__init__()
        self.visual = visual
        self.readout = readout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.readout(*self.visual(images))


AREA_SIGMA = {"V1": 0.045, "V2": 0.06, "V3": 0.08, "hV4": 0.12}  # pRF size at the fovea, image fractions
MAX_ECC = 0.42  # the most peripheral pRF centre, image fractions from the centre


def _rank(values: np.ndarray) -> np.ndarray:
    """Each value's rank as a fraction in (0, 1)."""
    return (np.argsort(np.argsort(values, kind="stable"), kind="stable") + 0.5) / len(values)


def retinotopic_map(
    kind: np.ndarray, xyz: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pRF centres ``(x, y)`` (image fractions, row 0 at the top) and eccentricities of retinotopic voxels.

    A voxel maps the visual field contralateral to its hemisphere (MNI x < 0 is the left hemisphere, which sees
    the right half of the image). V1–V3 ventral map the upper quarter-field, dorsal the lower, hV4 the whole
    hemifield. Within each area × hemisphere, eccentricity follows the voxel's rank of MNI y (foveal at the
    occipital pole, peripheral anteriorly) and polar angle its rank of MNI z (the horizontal meridian where the
    ventral and dorsal banks meet), both with jitter, so the maps are smooth in anatomy without being exact.
    """
    n = len(kind)
    x, y, ecc = np.empty(n), np.empty(n), np.empty(n)
    side = np.where(xyz[:, 0] < 0, 1.0, -1.0)  # +1: left hemisphere, right half of the image
    for area in np.unique(kind):
        for hemi in (1.0, -1.0):
            idx = np.flatnonzero((kind == area) & (side == hemi))
            if not len(idx):
                continue
            ecc[idx] = MAX_ECC * np.clip(_rank(xyz[idx, 1]) + rng.normal(0, 0.08, len(idx)), 0.03, 1.0)
            p = np.clip(_rank(xyz[idx, 2]) + rng.normal(0, 0.1, len(idx)), 0.03, 0.97)
            if area == "hV4":
                upward = (0.5 - p) * np.pi  # −π/2 (lower vertical meridian) … π/2 (upper), low z upper
            elif area.endswith("v"):
                upward = (1 - p) * np.pi / 2  # upper quarter-field, horizontal meridian at the top of the bank
            else:
                upward = -p * np.pi / 2  # lower quarter-field, horizontal meridian at the bottom of the bank
            x[idx] = 0.5 + hemi * ecc[idx] * np.cos(upward)
            y[idx] = 0.5 - ecc[idx] * np.sin(upward)
    return x, y, ecc


def sample_voxel_params(
    family: np.ndarray, roi_kind: list[str], xyz: np.ndarray, rng: np.random.Generator
) -> VoxelParams:
    """Draw generating parameters for voxels given their family, ROI kind and MNI position ``xyz (V, 3)`` in mm.

    ``roi_kind`` per voxel is a retinotopic area ('V1v'…'hV4'), a category ('face', …, with an optional
    ':mixed' suffix for occipital category areas such as OFA/OPA that keep some retinotopy), or ''.
    Retinotopic voxels follow `retinotopic_map`; their pRF size grows with eccentricity and up the hierarchy.
    Mixed category voxels prefer the contralateral side a little.
    """
    n = len(family)
    k = len(CATEGORIES)
    kind = np.asarray(roi_kind, dtype=str)
    prf_x, prf_y = np.empty(n), np.empty(n)
    prf_sigma = np.empty(n)
    energy_w = rng.gamma(1.0, 1.0, size=(n, N_ENERGY))
    category_w = np.abs(rng.normal(0, 0.08, size=(n, k)))
    low_gain, category_gain = np.zeros(n), np.zeros(n)
    pref_x = np.clip(0.5 + rng.normal(0, 0.12, n), 0.15, 0.85)
    pref_y = np.clip(0.5 + rng.normal(0, 0.12, n), 0.15, 0.85)
    pref_sigma = rng.uniform(0.25, 0.45, n)
    retino = family == 1
    if retino.any():
        rx, ry, ecc = retinotopic_map(kind[retino], xyz[retino], rng)
        size = np.array([AREA_SIGMA[a if a == "hV4" else a[:2]] for a in kind[retino]])
        prf_x[retino], prf_y[retino] = rx, ry
        prf_sigma[retino] = size * (1 + 1.5 * ecc) * np.exp(rng.normal(0, 0.1, len(ecc)))
        energy_w[retino & (kind == "hV4"), -2:] *= 4  # colour
        low_gain[retino] = 1.0
        category_w[retino] = 0
    contralateral = np.where(xyz[:, 0] < 0, 0.08, -0.08)
    for v in np.flatnonzero(~retino):
        if family[v] == 2:
            cat, _, mixed = kind[v].partition(":")
            category_w[v, CATEGORIES.index(cat)] = rng.uniform(0.8, 1.2)
            category_gain[v] = 1.0
            if mixed:
                pref_x[v] = np.clip(pref_x[v] + contralateral[v], 0.15, 0.85)
                pref_sigma[v] = rng.uniform(0.12, 0.2)
                low_gain[v] = 0.15
            prf_x[v], prf_y[v], prf_sigma[v] = pref_x[v], pref_y[v], pref_sigma[v]
        else:
            prf_x[v], prf_y[v] = rng.uniform(0.2, 0.8, 2)
            prf_sigma[v] = rng.uniform(0.1, 0.3)
            low_gain[v] = rng.uniform(0.2, 0.6)
            category_gain[v] = rng.uniform(0.2, 0.6)
    return VoxelParams(
        family=family.astype(np.int8),
        prf_x=prf_x,
        prf_y=prf_y,
        prf_sigma=prf_sigma,
        energy_w=energy_w,
        pref_x=pref_x,
        pref_y=pref_y,
        pref_sigma=pref_sigma,
        category_w=category_w,
        low_gain=low_gain,
        category_gain=category_gain,
    )
