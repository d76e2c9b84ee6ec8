"""The Algonauts 2023 challenge layout: readers of its files (`brainatt.prep.algonauts` turns them into
``responses.h5``).

Layout (per subject folder ``subjXX/`` under the root)::

    training_split/training_fmri/{lh,rh}_training_fmri.npy      (n_rows, n_vertices_hemi) float
    training_split/training_images/train-NNNN_nsd-XXXXX.png     NNNN = 1-based row, XXXXX = 0-based nsd id
    test_split/test_images/test-NNNN_nsd-XXXXX.png              images without fMRI (stimuli only)
    roi_masks/{lh,rh}.<atlas>_challenge_space.npy               (n_vertices_hemi,) ROI code per vertex
    roi_masks/mapping_<atlas>.npy                               dict {code: name}, a pickled object array

Our own extension (written by `brainatt.synth.algonauts.export_algonauts`, optional when reading):
``training_fmri/{lh,rh}_ncsnr.npy`` (ncsnr per vertex) and ``training_fmri/n_reps.npy`` (trials averaged per row).
Real challenge files carry neither.

Mapping files are pickles (the challenge's format): read them only from a source you trust.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from brainatt.io import BrainattError

HEMIS = ("lh", "rh")
TRAIN_PNG = re.compile(r"train-(\d+)_nsd-(\d+)\.png")
TEST_PNG = re.compile(r"test-(\d+)_nsd-(\d+)\.png")
CHALLENGE_SUFFIX = "_challenge_space.npy"


def fmri_dir(root: Path, subject: str) -> Path:
    return root / subject / "training_split" / "training_fmri"


def train_images_dir(root: Path, subject: str) -> Path:
    return root / subject / "training_split" / "training_images"


def subject_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise BrainattError(f"{root}: Algonauts root not found: set dataset.root to the folder holding subj01/ …")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"subj\d+", p.name))


def image_list(folder: Path, pattern: re.Pattern[str]) -> tuple[np.ndarray, list[Path]]:
    """nsd ids and paths of a folder's images in row order; the row numbers must run 1..n without gaps."""
    if not folder.is_dir():
        raise BrainattError(f"{folder}: image folder not found: download or unpack this subject's images")
    found: dict[int, tuple[int, Path]] = {}
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = (int(m.group(2)), p)
    if sorted(found) != list(range(1, len(found) + 1)):
        missing = sorted(set(range(1, max(found, default=0) + 1)) - set(found))
        raise BrainattError(
            f"{folder}: image rows must be numbered 1..n ({pattern.pattern}); "
            f"{f'row {missing[0]} is missing' if missing else 'no image found'}: re-download the folder"
        )
    ids = np.array([found[r][0] for r in sorted(found)], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise BrainattError(f"{folder}: an nsd id appears in two image files: re-download the folder")
    return ids, [found[r][1] for r in sorted(found)]


def load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    if not path.exists():
        raise BrainattError(f"{path}: {what} not found: download it (or re-run the export that writes it)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise BrainattError(f"{path}: not a readable .npy file ({e}): re-download it") from None


def load_fmri(path: Path, n_rows: int, images: Path) -> np.ndarray:
    a = load_npy(path, "fMRI responses", mmap=True)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        raise BrainattError(
            f"{path}: expected a 2-D float array (images, vertices), got {a.dtype} {a.shape}: re-download it"
        )
    if a.shape[0] != n_rows:
        raise BrainattError(
            f"{path}: {a.shape[0]} rows but {images} holds {n_rows} train-NNNN_nsd-XXXXX.png images: "
            "the fMRI and the images must come from the same download"
        )
    return a


def read_rois(folder: Path, n_vertices: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, dict[int, str]]]:
    """Per atlas: code per vertex (lh then rh) and the code → name table (code ≤ 0 dropped, as NSD's ctab reader)."""
    rois, names = {}, {}
    for lh_path in sorted(folder.glob(f"lh.*{CHALLENGE_SUFFIX}")):
        atlas = lh_path.name[len("lh.") : -len(CHALLENGE_SUFFIX)]
        parts = []
        for hemi in HEMIS:
            path = folder / f"{hemi}.{atlas}{CHALLENGE_SUFFIX}"
            codes = load_npy(path, f"{hemi} ROI mask")
            if codes.shape != (n_vertices[hemi],) or not np.issubdtype(codes.dtype, np.number):
                raise BrainattError(
                    f"{path}: expected {n_vertices[hemi]} numeric ROI codes (one per {hemi} challenge vertex), "
                    f"got {codes.dtype} {codes.shape}: re-download roi_masks/"
                )
            parts.append(np.rint(codes).astype(np.int16))
        mapping_path = folder / f"mapping_{atlas}.npy"
        if not mapping_path.exists():
            raise BrainattError(f"{mapping_path}: ROI name mapping not found: re-download roi_masks/")
        try:
            mapping = np.load(mapping_path, allow_pickle=True).item()
        except (OSError, ValueError) as e:
            raise BrainattError(f"{mapping_path}: cannot read the ROI mapping ({e}): re-download it") from None
        if not isinstance(mapping, dict):
            raise BrainattError(f"{mapping_path}: expected a dict {{code: name}}: re-download roi_masks/")
        rois[atlas] = np.concatenate(parts)
        names[atlas] = {int(k): str(v) for k, v in mapping.items() if int(k) > 0}
    return rois, names


def read_extension(
    fmri_dir: Path, n_vertices: dict[str, int], n_rows: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """ncsnr per vertex (lh then rh) and repeats per row from our extension files, None where absent."""
    ncsnr = None
    paths = [fmri_dir / f"{hemi}_ncsnr.npy" for hemi in HEMIS]
    if all(p.exists() for p in paths):
        parts = [load_npy(p, "ncsnr") for p in paths]
        for p, part, hemi in zip(paths, parts, HEMIS, strict=True):
            if part.shape != (n_vertices[hemi],) or not np.issubdtype(part.dtype, np.floating):
                raise BrainattError(
                    f"{p}: expected {n_vertices[hemi]} float values (one per {hemi} vertex), got "
                    f"{part.dtype} {part.shape}: delete it or re-run the export"
                )
        ncsnr = np.concatenate(parts).astype(np.float32)
        for p, part in zip(paths, parts, strict=True):
            bad = ~np.isnan(part) & ~(np.isfinite(part) & (part >= 0))
            if bad.any() or np.isnan(part).all():
                what = f"{int(bad.sum())} negative or infinite values" if bad.any() else "only NaN"
                raise BrainattError(f"{p}: ncsnr holds {what}; ncsnr is ≥ 0: delete it or re-run the export")
    n_reps = None
    path = fmri_dir / "n_reps.npy"
    if path.exists():
        n_reps = load_npy(path, "repeat counts")
        if n_reps.shape != (n_rows,) or not np.issubdtype(n_reps.dtype, np.integer):
            raise BrainattError(
                f"{path}: expected {n_rows} integer repeat counts (one per fMRI row), got "
                f"{n_reps.dtype} {n_reps.shape}: delete it or re-run the export"
            )
    return ncsnr, n_reps
