"""The images (and captions) the configured subjects saw → ``results/stimuli/images.h5``."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from brainatt.io import BrainattError, atomic_h5
from brainatt.nsd.layout import NSDLayout, read_captions, read_expdesign, read_stim_info, session_trial_count

log = logging.getLogger(__name__)
CHUNK = 256


def seen_nsd_ids(layout: NSDLayout, subjects: list[str]) -> np.ndarray:
    """Sorted nsd ids of every image shown to any of ``subjects`` in the sessions on disk."""
    design = read_expdesign(layout.expdesign)
    ids = []
    for subject in subjects:
        s = design.subject_index(subject, layout.expdesign)
        n_trials = sum(session_trial_count(p) for p in layout.sessions(subject))
        ids.append(design.trial_nsd_ids(s, n_trials))
    return np.unique(np.concatenate(ids))


def write_stimuli(layout: NSDLayout, subjects: list[str], out: str | Path) -> Path:
    ids = seen_nsd_ids(layout, subjects)
    captions = read_captions(layout, read_stim_info(layout.stim_info))
    path = layout.stimuli
    if not path.exists():
        raise BrainattError(f"{path}: stimulus file not found: download nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    try:
        src = h5py.File(path, "r")
    except OSError as e:
        raise BrainattError(f"{path}: not a readable HDF5 file ({e}): re-download it") from None
    with src, atomic_h5(out, {"subjects": subjects, "root": str(layout.root)}, "images: uint8 RGB") as f:
        brick = src.get("imgBrick")
        if brick is None or brick.ndim != 4 or brick.shape[-1] != 3:
            raise BrainattError(f"{path}: expected dataset imgBrick (N,H,W,3): re-download nsd_stimuli.hdf5")
        if ids.max() >= len(brick):
            raise BrainattError(
                f"{path}: imgBrick has {len(brick)} images but the design shows nsd id "
                f"{ids.max()}: the stimulus file and the design do not belong together"
            )
        f["nsd_ids"] = ids
        images = f.create_dataset("images", (len(ids), *brick.shape[1:]), np.uint8, chunks=(1, *brick.shape[1:]))
        for i in tqdm(range(0, len(ids), CHUNK), desc="stimuli"):
            try:
                block = brick[ids[i : i + CHUNK]]  # sorted ids: h5py fancy indexing is allowed
            except OSError as e:  # damage past the header, e.g. a bad compressed chunk
                raise BrainattError(
                    f"{path}: cannot read imgBrick ({e}): the file is corrupt or truncated; re-download it"
                ) from None
            images[i : i + CHUNK] = block
        if captions is not None:
            per = [captions.get(int(n), []) for n in ids]
            width = max(1, max(len(c) for c in per))
            table = np.array([c + [""] * (width - len(c)) for c in per], dtype=object)
            f.create_dataset("captions", data=table, dtype=h5py.string_dtype())
    log.info("wrote %d images to %s", len(ids), out)
    return Path(out)
