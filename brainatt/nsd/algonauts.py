"""The Algonauts 2023 challenge layout: read it into ``responses.h5``, and write nsd-synth worlds in it.

Layout (per subject folder ``subjXX/`` under the root)::

    training_split/training_fmri/{lh,rh}_training_fmri.npy      (n_rows, n_vertices_hemi) float
    training_split/training_images/train-NNNN_nsd-XXXXX.png     NNNN = 1-based row, XXXXX = 0-based nsd id
    test_split/test_images/test-NNNN_nsd-XXXXX.png              images without fMRI (stimuli only)
    roi_masks/{lh,rh}.<atlas>_challenge_space.npy               (n_vertices_hemi,) ROI code per vertex
    roi_masks/mapping_<atlas>.npy                               dict {code: name}, a pickled object array

Our own extension (written by `export_algonauts`, optional when reading): ``training_fmri/{lh,rh}_ncsnr.npy``
(ncsnr per vertex) and ``training_fmri/n_reps.npy`` (trials averaged per row). Real challenge files carry neither.

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
  of these datasets has an attr ``source`` ('extension' or 'unknown').

Mapping files are pickles (the challenge's format): read them only from a source you trust.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from brainatt.io import BrainattError, atomic_h5, atomic_path
from brainatt.metrics import noise_ceiling

if TYPE_CHECKING:
    from brainatt.synth.world import WorldSpec

log = logging.getLogger(__name__)

HEMIS = ("lh", "rh")
SYNTH_ATLASES = ["prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words", "floc-food"]
TRAIN_PNG = re.compile(r"train-(\d+)_nsd-(\d+)\.png")
TEST_PNG = re.compile(r"test-(\d+)_nsd-(\d+)\.png")
CHALLENGE_SUFFIX = "_challenge_space.npy"
ROW_BLOCK = 1024  # rows copied at a time from the (memory-mapped) fMRI arrays


def _fmri_dir(root: Path, subject: str) -> Path:
    return root / subject / "training_split" / "training_fmri"


def _train_images_dir(root: Path, subject: str) -> Path:
    return root / subject / "training_split" / "training_images"


def _subject_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise BrainattError(f"{root}: Algonauts root not found: set dataset.root to the folder holding subj01/ …")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"subj\d+", p.name))


def _image_list(folder: Path, pattern: re.Pattern[str]) -> tuple[np.ndarray, list[Path]]:
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


def _load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    if not path.exists():
        raise BrainattError(f"{path}: {what} not found: download it (or re-run the export that writes it)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise BrainattError(f"{path}: not a readable .npy file ({e}): re-download it") from None


def _load_fmri(path: Path, n_rows: int, images: Path) -> np.ndarray:
    a = _load_npy(path, "fMRI responses", mmap=True)
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


def _read_rois(folder: Path, n_vertices: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, dict[int, str]]]:
    """Per atlas: code per vertex (lh then rh) and the code → name table (code ≤ 0 dropped, as NSD's ctab reader)."""
    rois, names = {}, {}
    for lh_path in sorted(folder.glob(f"lh.*{CHALLENGE_SUFFIX}")):
        atlas = lh_path.name[len("lh.") : -len(CHALLENGE_SUFFIX)]
        parts = []
        for hemi in HEMIS:
            path = folder / f"{hemi}.{atlas}{CHALLENGE_SUFFIX}"
            codes = _load_npy(path, f"{hemi} ROI mask")
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


def _read_extension(
    fmri_dir: Path, n_vertices: dict[str, int], n_rows: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """ncsnr per vertex (lh then rh) and repeats per row from our extension files, None where absent."""
    ncsnr = None
    paths = [fmri_dir / f"{hemi}_ncsnr.npy" for hemi in HEMIS]
    if all(p.exists() for p in paths):
        parts = [_load_npy(p, "ncsnr") for p in paths]
        for p, part, hemi in zip(paths, parts, HEMIS, strict=True):
            if part.shape != (n_vertices[hemi],) or not np.issubdtype(part.dtype, np.floating):
                raise BrainattError(
                    f"{p}: expected {n_vertices[hemi]} float values (one per {hemi} vertex), got "
                    f"{part.dtype} {part.shape}: delete it or re-run the export"
                )
        ncsnr = np.concatenate(parts).astype(np.float32)
    n_reps = None
    path = fmri_dir / "n_reps.npy"
    if path.exists():
        n_reps = _load_npy(path, "repeat counts")
        if n_reps.shape != (n_rows,) or not np.issubdtype(n_reps.dtype, np.integer):
            raise BrainattError(
                f"{path}: expected {n_rows} integer repeat counts (one per fMRI row), got "
                f"{n_reps.dtype} {n_reps.shape}: delete it or re-run the export"
            )
    return ncsnr, n_reps


def preprocess_algonauts(root: str | Path, subject: str, out: str | Path) -> Path:
    """Read one subject's challenge files into ``responses.h5`` so later stages need not know the layout."""
    t0 = time.time()
    root = Path(root)
    folders = _subject_folders(root)
    if subject not in folders:
        raise BrainattError(
            f"{root / subject}: subject folder not found (found {folders}): fix dataset.subjects or dataset.root"
        )
    if len(folders) < 2:
        raise BrainattError(
            f"{root}: only {subject}/ is present, but the test split is the images every subject saw: "
            "download at least two subjects' folders"
        )
    ids = {s: _image_list(_train_images_dir(root, s), TRAIN_PNG)[0] for s in folders}
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

    fmri_dir = _fmri_dir(root, subject)
    images = _train_images_dir(root, subject)
    fmri = {h: _load_fmri(fmri_dir / f"{h}_training_fmri.npy", len(row_ids), images) for h in HEMIS}
    n_vertices = {h: fmri[h].shape[1] for h in HEMIS}
    rois, roi_names = _read_rois(root / subject / "roi_masks", n_vertices)
    ncsnr, n_reps = _read_extension(fmri_dir, n_vertices, len(row_ids))
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
    with atomic_h5(out, config, "betas: Algonauts 2023 responses (z-scored per session); nc_test: %") as f:
        for split, rows in splits.items():
            betas = f.create_dataset(f"{split}/betas", (len(rows), n_vox), np.float32)
            for lo in range(0, len(rows), ROW_BLOCK):
                block = rows[lo : lo + ROW_BLOCK]
                parts = [np.asarray(fmri[h][block], dtype=np.float32) for h in HEMIS]
                for h, part in zip(HEMIS, parts, strict=True):
                    bad = ~np.isfinite(part).all(1)
                    if bad.any():
                        raise BrainattError(
                            f"{fmri_dir / f'{h}_training_fmri.npy'}: row {block[bad][0] + 1} holds NaN or inf: "
                            "re-download it"
                        )
                betas[lo : lo + len(block)] = np.concatenate(parts, axis=1)
            f[f"{split}/nsd_ids"] = row_ids[rows]
            f[f"{split}/n_reps"] = n_reps[rows]
            f[f"{split}/n_reps"].attrs["source"] = source(known_reps)
        f.create_dataset("trials/betas", (0, n_vox), np.float16)
        f["trials/nsd_ids"] = np.zeros(0, np.int64)
        f["trials/session"] = np.zeros(0, np.int64)

        v = f.create_group("voxels")
        v["hemi"] = np.repeat(np.array(HEMIS, dtype="S2"), [n_vertices[h] for h in HEMIS])
        v["vertex"] = np.concatenate([np.arange(n_vertices[h]) for h in HEMIS])
        for atlas in rois:
            v[f"roi/{atlas}"] = rois[atlas]
            v[f"roi_names/{atlas}"] = np.array([f"{k}:{n}" for k, n in sorted(roi_names[atlas].items())], dtype="S")
        v["ncsnr"] = ncsnr
        v["ncsnr"].attrs["source"] = source(known_ncsnr)
        v["nc_test"] = nc_test.astype(np.float32)
        v["nc_test"].attrs["source"] = source(known_nc)
        f.attrs["subject"] = subject
    log.info("%s: wrote %s in %.1f s", subject, out, time.time() - t0)
    return Path(out)


def write_algonauts_stimuli(root: str | Path, subjects: list[str], out: str | Path) -> Path:
    """``images.h5`` (as `brainatt.prep.stimuli` writes it) from the PNGs of the listed subjects, without captions."""
    root = Path(root)
    found: dict[int, Path] = {}
    for subject in subjects:
        if not (root / subject).is_dir():
            raise BrainattError(f"{root / subject}: subject folder not found: fix dataset.subjects or dataset.root")
        lists = [_image_list(_train_images_dir(root, subject), TRAIN_PNG)]
        test_dir = root / subject / "test_split" / "test_images"
        if test_dir.is_dir():
            lists.append(_image_list(test_dir, TEST_PNG))
        for ids, paths in lists:
            for n, p in zip(ids, paths, strict=True):
                found.setdefault(int(n), p)
    ids = np.array(sorted(found), dtype=np.int64)
    with atomic_h5(out, {"subjects": list(subjects), "root": str(root)}, "images: uint8 RGB") as f:
        f["nsd_ids"] = ids
        images = None
        for i, n in enumerate(tqdm(ids, desc="stimuli")):
            path = found[int(n)]
            try:
                img = np.asarray(Image.open(path).convert("RGB"))
            except OSError as e:
                raise BrainattError(f"{path}: cannot read the image ({e}): re-download it") from None
            if images is None:
                images = f.create_dataset("images", (len(ids), *img.shape), np.uint8, chunks=(1, *img.shape))
            if img.shape != images.shape[1:]:
                raise BrainattError(
                    f"{path}: image is {img.shape[:2]}, the others {images.shape[1:3]}: "
                    "all stimuli must have one size; re-download it"
                )
            images[i] = img
    log.info("wrote %d images to %s", len(ids), out)
    return Path(out)


def _image_source(f: h5py.File, path: Path) -> Callable[[int], np.ndarray]:
    """A function nsd id → image, from ``nsd_stimuli.hdf5`` (imgBrick) or an ``images.h5``."""
    if "imgBrick" in f:
        return lambda n: f["imgBrick"][n]
    if "images" in f and "nsd_ids" in f:
        ids = f["nsd_ids"][()]

        def get(n: int) -> np.ndarray:
            i = int(np.searchsorted(ids, n))
            if i == len(ids) or ids[i] != n:
                raise BrainattError(f"{path}: no image for nsd id {n}: write images.h5 for these subjects")
            return f["images"][i]

        return get
    raise BrainattError(f"{path}: neither imgBrick nor images/nsd_ids: pass nsd_stimuli.hdf5 or images.h5")


def _export_subject(responses: Path, image: Callable[[int], np.ndarray], folder: Path) -> None:
    with h5py.File(responses, "r") as r:
        ids = np.concatenate([r["train/nsd_ids"][()], r["test/nsd_ids"][()]])
        betas = np.concatenate([r["train/betas"][()], r["test/betas"][()]])
        n_reps = np.concatenate([r["train/n_reps"][()], r["test/n_reps"][()]])
        hemi = r["voxels/hemi"][()].astype(str)
        rois = {a: r[f"voxels/roi/{a}"][()] for a in r.get("voxels/roi", {})}
        names = {a: [s.decode().partition(":") for s in r[f"voxels/roi_names/{a}"][()]] for a in rois}
        ncsnr = r["voxels/ncsnr"][()]
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
    for atlas, table in names.items():
        mapping = {0: "Unknown", **{int(k): name for k, _, name in table}}
        np.save(roi_dir / f"mapping_{atlas}.npy", np.array(mapping, dtype=object), allow_pickle=True)
    width = max(4, len(str(len(ids))))
    for row, n in enumerate(tqdm(ids[order], desc=f"{folder.name} images")):
        Image.fromarray(image(int(n))).save(img_dir / f"train-{row + 1:0{width}d}_nsd-{n:05d}.png")


def _export_into(responses_h5_paths: dict[str, Path], images: Path, root: Path) -> None:
    images = Path(images)
    if not images.exists():
        raise BrainattError(f"{images}: stimulus file not found: pass nsd_stimuli.hdf5 or results/stimuli/images.h5")
    with h5py.File(images, "r") as f:
        image = _image_source(f, images)
        for subject, path in responses_h5_paths.items():
            _export_subject(Path(path), image, root / subject)


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
    from brainatt.nsd.layout import NSDLayout  # the simulator and the NSD recipe (torch) only load when simulating
    from brainatt.prep.responses import preprocess_subject
    from brainatt.synth.writer import write_world

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
