"""The Algonauts 2023 layout (`brainatt.nsd.algonauts`) → ``responses.h5`` and ``images.h5``.

`preprocess_algonauts` writes the same ``responses.h5`` contract as the NSD recipe, except:

- the responses are the challenge's (already z-scored per session and averaged over repeats); they are copied, not
  re-normalised, and every challenge vertex is kept: the config's ``dataset.mask`` (and ``space``, ``betas``) are
  ignored, and the atlases are all those found in ``roi_masks/`` (``dataset.atlases`` is not consulted);
- vertices replace voxels: lh vertices then rh vertices; ``voxels/vertex`` is each one's index among its
  hemisphere's challenge-space vertices, and there is no ``voxels/ijk``, ``voxels/affine`` or ``voxels/mask_shape``;
- the test split is the images every ``subjXX`` folder under the root has fMRI for (NSD's shared images, as far as
  the challenge released them), in ascending nsd id, not ``sharedix`` order; train is the rest, ascending. At least
  two subject folders are needed to recover it;
- there are no single trials: ``trials/*`` exist with 0 rows, and there is no ``voxels/ncsnr_estimated``;
- without the extension files ``n_reps`` is 0 (unknown) and ``voxels/ncsnr`` / ``voxels/nc_test`` are NaN; each
  of these datasets has an attr ``source`` ('extension' or 'unknown');
- the warnings counted are ``empty_atlases`` (an atlas labelling no vertex) and ``constant_voxels`` (vertices
  constant over every image: ncsnr and NC 0 where known); the NSD-only kinds are absent (NA in ``prep.tsv``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainatt.contracts.responses import Voxels, responses_writer
from brainatt.contracts.stimuli import stimuli_writer
from brainatt.io import BrainattError
from brainatt.metrics import noise_ceiling
from brainatt.nsd.algonauts import (
    HEMIS,
    TEST_PNG,
    TRAIN_PNG,
    fmri_dir,
    image_list,
    load_fmri,
    read_extension,
    read_rois,
    subject_folders,
    train_images_dir,
)

log = logging.getLogger(__name__)
ROW_BLOCK = 1024  # rows copied at a time from the (memory-mapped) fMRI arrays


def preprocess_algonauts(root: str | Path, subject: str, out: str | Path) -> Path:
    """Read one subject's challenge files into ``responses.h5`` so later stages need not know the layout."""
    t0 = time.time()
    root = Path(root)
    folders = subject_folders(root)
    if subject not in folders:
        raise BrainattError(
            f"{root / subject}: subject folder not found (found {folders}): fix dataset.subjects or dataset.root"
        )
    if len(folders) < 2:
        raise BrainattError(
            f"{root}: only {subject}/ is present, but the test split is the images every subject saw: "
            "download at least two subjects' folders"
        )
    ids = {s: image_list(train_images_dir(root, s), TRAIN_PNG)[0] for s in folders}
    row_ids = ids[subject]
    shared = row_ids[np.all([np.isin(row_ids, ids[s]) for s in folders], axis=0)]
    if not len(shared):
        raise BrainattError(
            f"{root}: the subject folders {folders} share no image, so there is no test split: "
            "check that they come from one Algonauts download"
        )
    order = np.argsort(row_ids)
    is_test = np.isin(row_ids[order], shared)
    splits = {"train": order[~is_test], "test": order[is_test]}  # rows, each split in ascending nsd id

    fmri_folder = fmri_dir(root, subject)
    images = train_images_dir(root, subject)
    fmri = {h: load_fmri(fmri_folder / f"{h}_training_fmri.npy", len(row_ids), images) for h in HEMIS}
    n_vertices = {h: fmri[h].shape[1] for h in HEMIS}
    rois, roi_names = read_rois(root / subject / "roi_masks", n_vertices)
    ncsnr, n_reps = read_extension(fmri_folder, n_vertices, len(row_ids))
    n_vox = sum(n_vertices.values())
    log.info("%s: %d images (%d test), %d + %d vertices", subject, len(row_ids), len(shared), *n_vertices.values())

    known_reps = n_reps is not None
    n_reps = n_reps.astype(np.int64) if known_reps else np.zeros(len(row_ids), np.int64)
    known_ncsnr = ncsnr is not None
    ncsnr = ncsnr if known_ncsnr else np.full(n_vox, np.nan, np.float32)
    test_reps = n_reps[splits["test"]]
    known_nc = known_ncsnr and known_reps and test_reps.any()
    nc_test = noise_ceiling(ncsnr, test_reps) if known_nc else np.full(n_vox, np.nan)

    def source(known: bool) -> str:
        return "extension" if known else "unknown"

    config = {"layout": "algonauts", "root": str(root), "subject": subject}
    units = "betas: Algonauts 2023 responses (z-scored per session); nc_test: %"
    warnings = {"empty_atlases": 0, "constant_voxels": 0}  # no sessions, no ncsnr file: those kinds do not apply
    for atlas, codes in rois.items():
        if not (codes > 0).any() or not roi_names[atlas]:
            warnings["empty_atlases"] += 1
            log.warning("%s: atlas %r labels no vertex (or names no label)", root / subject / "roi_masks", atlas)
    lo, hi = np.full(n_vox, np.inf, np.float32), np.full(n_vox, -np.inf, np.float32)
    with responses_writer(out, subject, config, units) as w:
        for split, rows in splits.items():
            betas = w.split(split, row_ids[rows], n_reps[rows], n_voxels=n_vox)
            betas.parent["n_reps"].attrs["source"] = source(known_reps)
            for lo_row in range(0, len(rows), ROW_BLOCK):
                block = rows[lo_row : lo_row + ROW_BLOCK]
                parts = [np.asarray(fmri[h][block], dtype=np.float32) for h in HEMIS]
                for h, part in zip(HEMIS, parts, strict=True):
                    bad = ~np.isfinite(part).all(1)
                    if bad.any():
                        raise BrainattError(
                            f"{fmri_folder / f'{h}_training_fmri.npy'}: row {block[bad][0] + 1} holds NaN or inf: "
                            "re-download it"
                        )
                values = np.concatenate(parts, axis=1)
                np.minimum(lo, values.min(0), out=lo)
                np.maximum(hi, values.max(0), out=hi)
                betas[lo_row : lo_row + len(block)] = values
        constant = lo == hi
        if constant.any():
            warnings["constant_voxels"] = int(constant.sum())
            log.warning(
                "%s: %d vertices are constant over every image: they carry no response and get ncsnr 0",
                fmri_folder,
                int(constant.sum()),
            )
            if known_ncsnr:
                ncsnr = np.where(constant, 0, ncsnr).astype(np.float32)
            if known_nc:
                nc_test = np.where(constant, 0, nc_test)
        w.warnings(warnings)
        w.trials(0, n_vox)
        w.trial_index(np.zeros(0, np.int64), np.zeros(0, np.int64))
        w.voxels(
            Voxels(
                hemi=np.repeat(np.array(HEMIS), [n_vertices[h] for h in HEMIS]),
                rois=rois,
                roi_names=roi_names,
                ncsnr=ncsnr,
                nc_test=nc_test,
                vertex=np.concatenate([np.arange(n_vertices[h]) for h in HEMIS]),
                sources={"ncsnr": source(known_ncsnr), "nc_test": source(known_nc)},
            )
        )
    log.info("%s: wrote %s in %.1f s", subject, out, time.time() - t0)
    return Path(out)


def write_algonauts_stimuli(root: str | Path, subjects: list[str], out: str | Path) -> Path:
    """``images.h5`` (as `brainatt.prep.stimuli` writes it) from the PNGs of the listed subjects, without captions."""
    root = Path(root)
    found: dict[int, Path] = {}
    for subject in subjects:
        if not (root / subject).is_dir():
            raise BrainattError(f"{root / subject}: subject folder not found: fix dataset.subjects or dataset.root")
        lists = [image_list(train_images_dir(root, subject), TRAIN_PNG)]
        test_dir = root / subject / "test_split" / "test_images"
        if test_dir.is_dir():
            lists.append(image_list(test_dir, TEST_PNG))
        for ids, paths in lists:
            for n, p in zip(ids, paths, strict=True):
                found.setdefault(int(n), p)
    ids = np.array(sorted(found), dtype=np.int64)
    config = {"subjects": list(subjects), "root": str(root)}
    with stimuli_writer(out, config, ids, _read_png(found[int(ids[0])]).shape) as w:
        for i, n in enumerate(tqdm(ids, desc="stimuli")):
            img = _read_png(found[int(n)])
            if img.shape != w.images.shape[1:]:
                raise BrainattError(
                    f"{found[int(n)]}: image is {img.shape[:2]}, the others {w.images.shape[1:3]}: "
                    "all stimuli must have one size; re-download it"
                )
            w.images[i] = img
    log.info("wrote %d images to %s", len(ids), out)
    return Path(out)


def _read_png(path: Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
        raise BrainattError(f"{path}: cannot read the image ({e}): re-download it") from None
