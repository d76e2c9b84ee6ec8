"""nsd-synth worlds in the Algonauts 2023 layout (`brainatt.nsd.algonauts`), so that path is tested end to end.

`export_algonauts` writes preprocessed subjects as challenge files (plus the ncsnr / n_reps extension files);
`write_synth_algonauts` simulates a world, runs the NSD recipe on it and exports the result.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainatt.contracts.responses import read_responses
from brainatt.contracts.stimuli import Stimuli
from brainatt.io import BrainattError, atomic_path
from brainatt.nsd.algonauts import CHALLENGE_SUFFIX, HEMIS
from brainatt.nsd.layout import NSD_STIMULI, NSDLayout, open_image_brick
from brainatt.prep.responses import preprocess_subject
from brainatt.synth.world import WorldSpec
from brainatt.synth.writer import write_world

log = logging.getLogger(__name__)
SYNTH_ATLASES = ["prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words", "floc-food"]


def _images_of(path: Path, nsd_ids: np.ndarray) -> np.ndarray:
    """Images of ``nsd_ids`` (sorted) from NSD's ``nsd_stimuli.hdf5`` (imgBrick) or a brainatt ``images.h5``."""
    if path.name == NSD_STIMULI:
        with open_image_brick(path) as brick:
            return brick[nsd_ids]
    return Stimuli(path).images(nsd_ids)


def _export_subject(responses: Path, stimuli: Path, folder: Path) -> None:
    r = read_responses(responses)
    ids = np.concatenate([r.train.nsd_ids, r.test.nsd_ids])
    betas = np.concatenate([r.train.betas, r.test.betas])
    n_reps = np.concatenate([r.train.n_reps, r.test.n_reps])
    hemi, rois, ncsnr = r.voxels.hemi, r.voxels.rois, r.voxels.ncsnr
    order = np.argsort(ids)
    betas = betas[order]
    fmri_dir = folder / "training_split" / "training_fmri"
    img_dir = folder / "training_split" / "training_images"
    roi_dir = folder / "roi_masks"
    for d in (fmri_dir, img_dir, roi_dir):
        d.mkdir(parents=True)
    for h in HEMIS:
        cols = hemi == h
        np.save(fmri_dir / f"{h}_training_fmri.npy", betas[:, cols].astype(np.float32))
        np.save(fmri_dir / f"{h}_ncsnr.npy", ncsnr[cols].astype(np.float32))
        for atlas, codes in rois.items():
            np.save(roi_dir / f"{h}.{atlas}{CHALLENGE_SUFFIX}", codes[cols].astype(np.int32))
    np.save(fmri_dir / "n_reps.npy", n_reps[order].astype(np.int64))
    for atlas, table in r.voxels.roi_names.items():
        mapping = {0: "Unknown", **table}
        np.save(roi_dir / f"mapping_{atlas}.npy", np.array(mapping, dtype=object), allow_pickle=True)
    width = max(4, len(str(len(ids))))
    images = _images_of(stimuli, ids[order])
    for row, n in enumerate(tqdm(ids[order], desc=f"{folder.name} images")):
        Image.fromarray(images[row]).save(img_dir / f"train-{row + 1:0{width}d}_nsd-{n:05d}.png")


def _export_into(responses_h5_paths: dict[str, Path], images: Path, root: Path) -> None:
    images = Path(images)
    if not images.exists():
        raise BrainattError(f"{images}: stimulus file not found: pass nsd_stimuli.hdf5 or results/stimuli/images.h5")
    for subject, path in responses_h5_paths.items():
        _export_subject(Path(path), images, root / subject)


def export_algonauts(responses_h5_paths: dict[str, Path], images_h5_or_nsd_stimuli: Path, out_root: str | Path) -> Path:
    """Write preprocessed subjects in the challenge layout (atomically), so the Algonauts path can be tested.

    Every image with fMRI (train and test split) becomes a training row, as in the real challenge data; rows
    are in ascending nsd id. Also writes the ncsnr / n_reps extension files described in the module docstring.
    """
    with atomic_path(out_root, directory=True) as tmp:
        _export_into(responses_h5_paths, images_h5_or_nsd_stimuli, tmp)
    return Path(out_root)


def write_synth_algonauts(spec: WorldSpec, out: str | Path) -> Path:
    """Simulate an nsd-synth world, run the NSD recipe on it and write the result in the challenge layout.

    The folder appears only when complete; it holds ``subjXX/`` folders and the world's ``ground_truth/``.
    """
    if spec.n_subjects < 2:
        raise BrainattError(
            "synth: the Algonauts layout recovers the test split from images shared by subjects: "
            "set n_subjects to 2 or more"
        )
    t0 = time.time()
    root = Path(out)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.", suffix=".nsd.tmp", dir=root.parent) as work:
        nsd = write_world(spec, Path(work) / "nsd")
        layout = NSDLayout(nsd, space=spec.space)
        responses = {
            s: preprocess_subject(layout, s, Path(work) / f"{s}.h5", ["nsdgeneral"], SYNTH_ATLASES)
            for s in spec.subjects
        }
        with atomic_path(root, directory=True) as tmp:
            _export_into(responses, layout.stimuli, tmp)
            shutil.move(nsd / "ground_truth", tmp / "ground_truth")
    log.info("wrote nsd-synth world in the Algonauts layout to %s in %.1f s", root, time.time() - t0)
    return root
