"""nsd-synth anatomy: voxels and ROIs placed in the occipito-temporal cortex of nilearn's MNI152 template.

Each subject gets a coarse MNI-aligned grid cropped to a posterior slab (its own crop, so volume shapes differ
between subjects like NSD's native spaces), a brain mask, and NSD-style ROI atlases: spheres around literature
seed coordinates, jittered and scaled per subject and intersected with grey matter, assigned to the nearest seed
(in units of its radius) so ROIs do not overlap. These generating ROIs are the truth (each voxel's ``kind``); the
atlases a user reads are estimated from simulated pRF and localizer experiments (`brainatt.synth.atlases`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from nilearn import datasets, image
from scipy import ndimage

# Atlas name → list of (code, name, kind, MNI seed (x≥0 mirrored to both hemispheres unless left-only), radius mm).
# kind: a retinotopic area, or a category with ':mixed' for occipital category areas that keep retinotopy.
ATLASES: dict[str, list[tuple[int, str, str, tuple[float, float, float], float, bool]]] = {
    "prf-visualrois": [
        (1, "V1v", "V1v", (10, -98, -6), 9, False),
        (2, "V1d", "V1d", (10, -100, 6), 9, False),
        (3, "V2v", "V2v", (16, -92, -14), 10, False),
        (4, "V2d", "V2d", (16, -96, 16), 10, False),
        (5, "V3v", "V3v", (26, -86, -16), 10, False),
        (6, "V3d", "V3d", (24, -92, 24), 10, False),
        (7, "hV4", "hV4", (32, -78, -16), 10, False),
    ],
    "floc-faces": [
        (1, "OFA", "face:mixed", (42, -78, -6), 10, False),
        (2, "FFA-1", "face", (40, -54, -20), 12, False),
    ],
    "floc-bodies": [(1, "EBA", "body", (48, -70, 4), 12, False)],
    "floc-places": [
        (1, "OPA", "place:mixed", (32, -84, 20), 10, False),
        (2, "PPA", "place", (26, -46, -8), 12, False),
    ],
    "floc-words": [
        (1, "OWFA", "word:mixed", (-42, -74, -12), 11, True),
        (2, "VWFA-1", "word", (-44, -56, -16), 14, True),
    ],
    "floc-food": [(1, "food", "food", (32, -64, -14), 11, False)],
}
RETINOTOPIC_ATLAS = "prf-visualrois"


@dataclass(frozen=True)
class Seed:
    """One generating ROI sphere in one hemisphere: its atlas, code, kind, MNI centre (mm) and radius (mm)."""

    atlas: str
    code: int
    kind: str
    center: np.ndarray
    radius: float


@dataclass
class Anatomy:
    affine: np.ndarray  # (4,4) voxel → MNI mm
    brainmask: np.ndarray  # (X,Y,Z) bool
    cortex: np.ndarray  # (X,Y,Z) bool
    atlases: dict[str, np.ndarray]  # generating ROIs: name → (X,Y,Z) int16: −1 outside cortex, 0 none, k > 0 ROI
    labels: dict[str, dict[int, str]]  # name → code → ROI name
    nsdgeneral: np.ndarray  # (X,Y,Z) bool
    kind: np.ndarray  # (X,Y,Z) object: ROI kind of each labelled voxel, '' otherwise
    seeds: list[Seed]  # the generating spheres, in assignment order

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brainmask.shape

    def mni(self, ijk: np.ndarray) -> np.ndarray:
        """MNI coordinates (mm) of voxel indices ``(n, 3)``."""
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


@lru_cache(maxsize=4)
def _template(voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 grey-matter and brain masks resampled to a ``voxel_mm`` grid (nearest neighbour)."""
    target = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    target[:3, 3] = [-96, -132, -72]

    def resample(img):
        out = image.resample_img(
            img, target_affine=target, interpolation="nearest", force_resample=True, copy_header=True
        )
        return np.asarray(out.dataobj) > 0, out.affine

    gm, affine = resample(datasets.load_mni152_gm_mask(resolution=2, threshold=0.25))
    brain, _ = resample(datasets.load_mni152_brain_mask(resolution=2))
    return gm, brain, affine


def make_anatomy(rng: np.random.Generator, voxel_mm: float, scale: float) -> Anatomy:
    """One subject's anatomy; ``scale`` (≈0.8–1.2) grows or shrinks its ROIs and visual cortex."""
    gm, brain, affine = _template(voxel_mm)
    xyz = np.stack(np.meshgrid(*[np.arange(n) for n in gm.shape], indexing="ij"), -1) @ affine[:3, :3].T
    xyz = xyz + affine[:3, 3]
    # Posterior slab with a subject-specific crop (partial-coverage acquisition).
    lo = np.array([-76, -112, -40]) + rng.integers(-1, 2, 3) * voxel_mm
    hi = np.array([76, -28, 44]) + rng.integers(-1, 2, 3) * voxel_mm
    inside = np.all((xyz >= lo) & (xyz <= hi), -1)
    idx = np.argwhere(inside)
    i0, i1 = idx.min(0), idx.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(i0, i1, strict=True))
    gm, brain, xyz = gm[crop], brain[crop], xyz[crop]
    sub_affine = affine.copy()
    sub_affine[:3, 3] = affine[:3, :3] @ i0 + affine[:3, 3]
    cortex = gm & brain

    best = np.full(gm.shape, np.inf)
    owner: list[tuple[str, int]] = [("", 0)]
    owner_idx = np.zeros(gm.shape, dtype=np.int32)
    kinds = [""]
    seeds = []
    for atlas, rois in ATLASES.items():
        for code, _name, kind, seed, radius, left_only in rois:
            for hemi in (-1,) if left_only else (-1, 1):
                center = np.array([hemi * abs(seed[0]), seed[1], seed[2]]) + rng.normal(0, 2.0, 3)
                r = radius * scale * rng.uniform(0.85, 1.15)
                seeds.append(Seed(atlas, code, kind, center, r))
                d = np.linalg.norm(xyz - center, axis=-1) / r
                win = cortex & (d < 1) & (d < best)
                best[win] = d[win]
                owner.append((atlas, code))
                kinds.append(kind)
                owner_idx[win] = len(owner) - 1
    atlases = {}
    for atlas in ATLASES:
        vol = np.where(cortex, 0, -1).astype(np.int16)
        for j, (a, code) in enumerate(owner):
            if a == atlas:
                vol[owner_idx == j] = code
        atlases[atlas] = vol
    kind = np.asarray(kinds, dtype=object)[owner_idx]
    # nsdgeneral: labelled voxels plus visual cortex around them (grows with scale).
    labelled = owner_idx > 0
    dist = ndimage.distance_transform_edt(~labelled, sampling=voxel_mm)
    nsdgeneral = cortex & (dist <= voxel_mm * 1.5 * scale)
    atlases["nsdgeneral"] = np.where(cortex, nsdgeneral.astype(np.int16), -1).astype(np.int16)
    labels = {a: {code: name for code, name, *_ in rois} for a, rois in ATLASES.items()}
    labels["nsdgeneral"] = {1: "nsdgeneral"}
    return Anatomy(
        affine=sub_affine,
        brainmask=brain,
        cortex=cortex,
        atlases=atlases,
        labels=labels,
        nsdgeneral=nsdgeneral,
        kind=kind,
        seeds=seeds,
    )
