"""The images (and captions) the configured subjects saw in an NSD tree → ``results/stimuli/images.h5``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainatt.contracts.stimuli import stimuli_writer
from brainatt.io import BrainattError
from brainatt.nsd.layout import (
    NSDLayout,
    open_image_brick,
    read_captions,
    read_expdesign,
    read_stim_info,
    session_trial_count,
)

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
    path = layout.stimuli
    with open_image_brick(path) as brick:
        if ids.max() >= len(brick):
            raise BrainattError(
                f"{layout.expdesign}: the design shows nsd id {ids.max()} but imgBrick of {path} holds "
                f"{len(brick)} images: the design and the stimulus file do not belong together; re-download one"
            )
        captions = read_captions(layout, read_stim_info(layout.stim_info))
        if captions is not None:
            unlisted = [int(n) for n in ids if int(n) not in captions]
            if unlisted:
                raise BrainattError(
                    f"{layout.stim_info}: no row for nsd id {unlisted[0]} ({len(unlisted)} images the subjects saw "
                    "are not listed), so their captions cannot be found: the table and the design do not belong "
                    "together; re-download nsd_stim_info_merged.csv"
                )
        config = {"subjects": subjects, "root": str(layout.root)}
        with stimuli_writer(out, config, ids, brick.shape[1:]) as w:
            for i in tqdm(range(0, len(ids), CHUNK), desc="stimuli"):
                try:
                    block = brick[ids[i : i + CHUNK]]  # sorted ids: h5py fancy indexing is allowed
                except OSError as e:  # damage past the header, e.g. a bad compressed chunk
                    raise BrainattError(
                        f"{path}: cannot read imgBrick ({e}): the file is corrupt or truncated; re-download it"
                    ) from None
                w.images[i : i + CHUNK] = block
            if captions is not None:
                w.captions([captions.get(int(n), []) for n in ids])
    log.info("wrote %d images to %s", len(ids), out)
    return Path(out)
