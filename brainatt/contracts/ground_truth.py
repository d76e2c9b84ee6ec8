"""nsd-synth's ``ground_truth/{subject}.h5`` as stages outside the simulator read it: noise-free responses.

The simulator (`brainatt.synth.writer`) writes the file and reads the rest of it itself (the brain's state, each
voxel's generating parameters); stages that score against the truth take the noise-free responses from here.
Layout used here: ``ijk (V, 3)`` voxel indices and ``responses (N_images, V) float32`` by nsd id.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from brainatt.io import BrainattError


def true_columns(path: str | Path, ijk: np.ndarray | None, owner: str | Path) -> np.ndarray:
    """The ground truth's column of each voxel at ``ijk`` (those of ``owner``, the responses file they come from),
    matched by voxel index."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: ground-truth file missing (only nsd-synth worlds have one)")
    if ijk is None:
        raise BrainattError(f"{owner}: surface data: the ground truth is matched to volume voxels (NSD layout only)")
    with h5py.File(path, "r") as f:
        lookup = {tuple(v): i for i, v in enumerate(f["ijk"][()])}
    cols = np.array([lookup.get(tuple(v), -1) for v in ijk], dtype=np.int64)
    if len(cols) and cols.min() < 0:
        raise BrainattError(f"{path}: voxels of {owner} are missing from the ground truth: wrong subject?")
    return cols


def read_true_responses(path: str | Path, ijk: np.ndarray | None, nsd_ids: np.ndarray, owner: str | Path) -> np.ndarray:
    """Noise-free responses ``(len(nsd_ids), V)`` of the voxels at ``ijk`` (see `true_columns`)."""
    cols = true_columns(path, ijk, owner)
    with h5py.File(path, "r") as f:
        return f["responses"][()][nsd_ids][:, cols]
