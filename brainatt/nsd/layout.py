"""Readers for the Natural Scenes Dataset's on-disk layout.

Conventions owned here, once:
- MATLAB's 1-based indices (``masterordering``, ``subjectim``, ``sharedix``) become 0-based on reading.
- Volumes are (X,Y,Z) as nibabel reads them; NSD's HDF5 betas are (trials,Z,Y,X) as h5py reads them.
  `read_session` converts, and `mask_voxel_ijk` fixes the project's voxel order: C-order over (Z,Y,X),
  i.e. MATLAB's column-major order over (X,Y,Z), so that z-slab streaming yields voxels already in order.
- Volume betas are int16 × 300 (divide by 300 for % signal change); float betas are already in % signal change.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from brainatt.io import BrainattError

NSD_STIMULI = "nsd_stimuli.hdf5"  # the image brick's file name

BETA_SCALE = 300.0
SLAB_BYTES = 256 << 20  # z-slab size when streaming HDF5 betas


def mask_voxel_ijk(mask: np.ndarray) -> np.ndarray:
    """(V,3) voxel indices (i,j,k) of a (X,Y,Z) mask, in the project's voxel order (C-order over Z,Y,X)."""
    zyx = np.argwhere(np.asarray(mask).transpose(2, 1, 0))
    return zyx[:, ::-1].astype(np.int64)


@dataclass(frozen=True)
class ExpDesign:
    """``nsd_expdesign.mat`` with 0-based indices."""

    masterordering: np.ndarray  # (n_trials,) index into a subject's image list
    subjectim: np.ndarray  # (n_subjects, n_images) nsd ids
    sharedix: np.ndarray  # (n_shared,) nsd ids of the shared images

    def subject_index(self, subject: str, path: Path) -> int:
        m = re.fullmatch(r"subj(\d+)", subject)
        if m is None:
            raise BrainattError(
                f"subject names look like 'subj01', got {subject!r}: fix dataset.subjects in the config"
            )
        s = int(m.group(1)) - 1
        if not 0 <= s < len(self.subjectim):
            raise BrainattError(
                f"{path}: subject {subject} is not in the design (subjectim has {len(self.subjectim)} subjects): "
                "remove it from dataset.subjects or point dataset.root at the right NSD copy"
            )
        return s

    def trial_nsd_ids(self, s: int, n_trials: int) -> np.ndarray:
        return self.subjectim[s, self.masterordering[:n_trials]]


class NSDLayout:
    """Paths of an NSD tree (``root`` holds nsddata/, nsddata_betas/, nsddata_stimuli/)."""

    def __init__(self, root: str | Path, space: str = "func1pt8mm", betas: str = "betas_fithrf_GLMdenoise_RR"):
        self.root = Path(root)
        self.space = space
        self.betas_version = betas
        if not self.root.is_dir():
            raise BrainattError(f"{self.root}: NSD root not found: set dataset.root to your NSD download")

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        return self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd" / NSD_STIMULI

    @property
    def coco_annotations(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/annotations"

    def ppdata(self, subject: str) -> Path:
        return self.root / "nsddata/ppdata" / subject / self.space

    def betas_dir(self, subject: str) -> Path:
        return self.root / "nsddata_betas/ppdata" / subject / self.space / self.betas_version

    def roi(self, subject: str, atlas: str, hemi: str = "") -> Path:
        return self.ppdata(subject) / "roi" / f"{hemi + '.' if hemi else ''}{atlas}.nii.gz"

    def ctab(self, atlas: str) -> Path:
        return self.root / "nsddata/freesurfer/fsaverage/label" / f"{atlas}.mgz.ctab"

    def brainmask(self, subject: str) -> Path:
        return self.ppdata(subject) / "brainmask.nii.gz"

    def ncsnr(self, subject: str) -> Path:
        return self.betas_dir(subject) / "ncsnr.nii.gz"

    def sessions(self, subject: str) -> list[Path]:
        """Session beta files found on disk (hdf5 preferred over nii.gz), checked to be numbered 1..n."""
        d = self.betas_dir(subject)
        found: dict[int, Path] = {}
        for p in sorted(d.glob("betas_session*")):
            m = re.fullmatch(r"betas_session(\d+)\.(hdf5|nii\.gz)", p.name)
            if m and (int(m.group(1)) not in found or m.group(2) == "hdf5"):
                found[int(m.group(1))] = p
        if not found:
            raise BrainattError(
                f"{d}: no betas_sessionNN.hdf5 or .nii.gz files: download the betas of {subject} "
                f"({self.space}/{self.betas_version}) or fix dataset.root/space/betas"
            )
        missing = sorted(set(range(1, max(found) + 1)) - set(found))
        if missing:
            raise BrainattError(
                f"{d / f'betas_session{missing[0]:02d}.hdf5'}: session file missing "
                f"(found sessions {sorted(found)}): download it, or remove later sessions"
            )
        return [found[k] for k in sorted(found)]


def _show(value: object) -> str:
    """A value as a message shows it: numpy scalars as plain numbers (12.5, nan), strings quoted."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _design_indices(path: Path, name: str, value: np.ndarray, ndim: int) -> np.ndarray:
    """A 1-based MATLAB index array of the design as 0-based int64, refused unless whole numbers ≥ 1."""
    a = np.asarray(value)
    a = a.ravel() if ndim == 1 else np.atleast_2d(a)
    fix = "re-download nsd_expdesign.mat"
    if not a.size or not np.issubdtype(a.dtype, np.number):
        raise BrainattError(f"{path}: {name} is empty or not numeric ({a.dtype} {a.shape}): {fix}")
    bad = ~np.isfinite(a) | (a != np.round(a)) | (a < 1) if np.issubdtype(a.dtype, np.floating) else a < 1
    if bad.any():
        at = tuple(int(i) + 1 for i in np.argwhere(bad)[0])
        raise BrainattError(
            f"{path}: {name} holds {_show(a[tuple(i - 1 for i in at)])} at (1-based) {at if ndim > 1 else at[-1]}: "
            f"its entries are 1-based whole numbers; {fix}"
        )
    return a.astype(np.int64) - 1


def _first_repeat(ids: np.ndarray) -> tuple[int, int, int] | None:
    """(value, first position, second position) of the first value ``ids`` holds twice, None if none."""
    first: dict[int, int] = {}
    for i, v in enumerate(ids.tolist()):
        if v in first:
            return v, first[v], i
        first[v] = i
    return None


def read_expdesign(path: Path) -> ExpDesign:
    """``nsd_expdesign.mat`` as 0-based indices, checked: whole numbers, no image listed twice in a subject's list
    or in ``sharedix``, ``masterordering`` within the subjects' lists."""
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise BrainattError(f"{path}: design file not found: download nsddata/experiments/nsd/") from None
    except Exception as e:
        raise BrainattError(f"{path}: cannot read the design ({e}): re-download nsd_expdesign.mat") from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise BrainattError(f"{path}: design lacks '{missing[0]}': re-download nsd_expdesign.mat")
    design = ExpDesign(
        masterordering=_design_indices(path, "masterordering", mat["masterordering"], 1),
        subjectim=_design_indices(path, "subjectim", mat["subjectim"], 2),
        sharedix=_design_indices(path, "sharedix", mat["sharedix"], 1),
    )
    fix = "the design is corrupt; re-download nsd_expdesign.mat"
    for s, row in enumerate(design.subjectim):
        rep = _first_repeat(row)
        if rep:
            raise BrainattError(
                f"{path}: subjectim row {s + 1} (subj{s + 1:02d}) lists nsd id {rep[0] + 1} (1-based) twice, in "
                f"columns {rep[1] + 1} and {rep[2] + 1}: two images would be averaged as repeats; {fix}"
            )
    rep = _first_repeat(design.sharedix)
    if rep:
        raise BrainattError(
            f"{path}: sharedix lists nsd id {rep[0] + 1} (1-based) twice, at {rep[1] + 1} and {rep[2] + 1}: "
            f"the test split would hold it twice; {fix}"
        )
    n_images = design.subjectim.shape[1]
    out = np.flatnonzero(design.masterordering >= n_images)
    if len(out):
        raise BrainattError(
            f"{path}: masterordering[{out[0] + 1}] = {design.masterordering[out[0]] + 1} but subjectim lists "
            f"{n_images} images per subject ({len(out)} such trials): {fix}"
        )
    return design


def read_stim_info(path: Path) -> pd.DataFrame:
    """``nsd_stim_info_merged.csv``, checked: a readable table with one row per whole-number ``nsdId``."""
    fix = "re-download nsd_stim_info_merged.csv"
    if not path.exists():
        raise BrainattError(f"{path}: stimulus table not found: download nsd_stim_info_merged.csv")
    try:
        head = pd.read_csv(path, nrows=0)
        df = pd.read_csv(path, index_col=0) if "Unnamed: 0" in head.columns else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise BrainattError(f"{path}: the stimulus table is empty: {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise BrainattError(f"{path}: not a readable CSV table ({str(e).splitlines()[0]}): {fix}") from None
    if "nsdId" not in df:
        raise BrainattError(f"{path}: no nsdId column: is this nsd_stim_info_merged.csv?")
    if not len(df):
        raise BrainattError(f"{path}: the stimulus table has a header but no rows: {fix}")
    ids = pd.to_numeric(df["nsdId"], errors="coerce")
    bad = ids.isna() | (ids != ids.round()) | (ids < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BrainattError(
            f"{path}: nsdId {_show(df['nsdId'].iloc[row])} on data row {row + 1} is not a 0-based whole number: {fix}"
        )
    rep = _first_repeat(ids.to_numpy(np.int64))
    if rep:
        raise BrainattError(
            f"{path}: nsdId {rep[0]} has two rows (data rows {rep[1] + 1} and {rep[2] + 1}), so its captions "
            f"would be ambiguous: {fix}"
        )
    return df.assign(nsdId=ids.astype(np.int64))


def _coco_captions(path: Path) -> list[tuple[int, str]]:
    """(image_id, caption) pairs of a COCO ``captions_*.json``, checked."""
    fix = "re-download the COCO annotations (annotations_trainval2017.zip)"
    text = path.read_text(errors="replace")
    if not text.strip():
        raise BrainattError(f"{path}: the captions file is empty: {fix}")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as e:
        raise BrainattError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): {fix}") from None
    anns = coco.get("annotations") if isinstance(coco, dict) else None
    if not isinstance(anns, list):
        raise BrainattError(f"{path}: no 'annotations' list: not a COCO captions file; {fix}")
    pairs = []
    for i, ann in enumerate(anns):
        ok = isinstance(ann, dict) and isinstance(ann.get("caption"), str)
        image_id = ann.get("image_id") if ok else None
        if not ok or isinstance(image_id, bool) or not isinstance(image_id, int):
            raise BrainattError(
                f"{path}: annotation {i} lacks an integer 'image_id' and a string 'caption' (got "
                f"{json.dumps(ann)[:60]}): not a COCO captions file; {fix}"
            )
        pairs.append((image_id, ann["caption"].strip()))
    return pairs


def read_captions(layout: NSDLayout, stim_info: pd.DataFrame) -> dict[int, list[str]] | None:
    """Captions per nsd id from COCO-format ``captions_<split>.json`` files, or None when there are none."""
    files = sorted(layout.coco_annotations.glob("captions_*.json"))
    if not files or "cocoId" not in stim_info:
        return None
    coco = pd.to_numeric(stim_info["cocoId"], errors="coerce")
    bad = coco.isna() | (coco != coco.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BrainattError(
            f"{layout.stim_info}: cocoId {_show(stim_info['cocoId'].iloc[row])} on data row {row + 1} (nsdId "
            f"{stim_info['nsdId'].iloc[row]}) is not a whole number, so its captions cannot be found: "
            "re-download nsd_stim_info_merged.csv"
        )
    by_coco: dict[int, list[str]] = {}
    for f in files:
        for image_id, caption in _coco_captions(f):
            by_coco.setdefault(image_id, []).append(caption)
    return {int(n): by_coco.get(int(c), []) for n, c in zip(stim_info["nsdId"], coco, strict=True)}


def _load_volume(path: Path, what: str) -> nib.Nifti1Image:
    if not path.exists():
        raise BrainattError(f"{path}: {what} not found: check dataset.root, dataset.space and the subject")
    try:
        return nib.load(str(path))
    except Exception as e:
        raise BrainattError(f"{path}: cannot read {what} ({e}): re-download it") from None


def _volume_data(img: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as e:  # the header read fine, the data did not
        raise BrainattError(
            f"{path}: cannot read {what} ({e}): the file is corrupt or truncated; re-download it"
        ) from None


def read_volume(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D volume and its affine."""
    img = _load_volume(path, what)
    return _volume_data(img, path, what), img.affine


AFFINE_TOL_MM = 1e-3  # affines that differ by less are the same grid (float32 round-off in NIfTI headers)


@dataclass(frozen=True)
class Geometry:
    """A subject's voxel grid, from its brain mask: every volume read against it must match it exactly, shape and
    affine; nothing is resampled."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray

    def check(self, path: Path, what: str, shape: tuple[int, ...], affine: np.ndarray) -> None:
        fix = "use the file of the same subject and space (dataset.space) or re-download it; nothing is resampled"
        if tuple(shape) != self.shape:
            raise BrainattError(
                f"{path}: {what} is {tuple(shape)} voxels but the brain mask {self.path.name} is {self.shape}: "
                f"it comes from another space or subject; {fix}"
            )
        off = float(np.abs(np.asarray(affine, np.float64) - self.affine).max())
        if off > AFFINE_TOL_MM:
            raise BrainattError(
                f"{path}: {what} has the brain mask's shape but another affine (off by up to {off:.3g} mm or "
                f"voxel units from {self.path.name}'s): it lies on another grid; {fix}"
            )


def read_geometry(layout: NSDLayout, subject: str) -> Geometry:
    """The grid of ``brainmask.nii.gz``, the reference for every other volume of the subject."""
    path = layout.brainmask(subject)
    img = _load_volume(path, "brain mask")
    if len(img.shape) != 3:
        raise BrainattError(f"{path}: the brain mask is {img.shape}, expected a 3-D volume: re-download it")
    return Geometry(path, tuple(int(n) for n in img.shape), np.asarray(img.affine, np.float64))


def read_volume_on(path: Path, what: str, geometry: Geometry) -> np.ndarray:
    """A 3-D volume checked to lie on ``geometry``'s grid (shape and affine)."""
    img = _load_volume(path, what)
    geometry.check(path, what, img.shape, img.affine)
    return _volume_data(img, path, what)


def read_ctab(path: Path) -> dict[int, str]:
    """A FreeSurfer-style label table: lines ``<code> <name>``; code 0 (Unknown) is dropped."""
    if not path.exists():
        raise BrainattError(f"{path}: label table not found: download nsddata/freesurfer/fsaverage/label/")
    names = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1]
    return names


def read_atlas(layout: NSDLayout, subject: str, atlas: str, geometry: Geometry) -> tuple[np.ndarray, dict[int, str]]:
    """ROI volume (X,Y,Z) int (−1 outside cortex, 0 unlabelled, k label) on ``geometry``, and its code → name table.

    Refused unless on the brain mask's grid and holding whole-number labels (not a probability map)."""
    path = layout.roi(subject, atlas)
    vol = read_volume_on(path, f"ROI atlas {atlas!r}", geometry)
    if np.issubdtype(vol.dtype, np.floating):
        bad = ~np.isfinite(vol) | (vol != np.round(vol))
        if bad.any():
            raise BrainattError(
                f"{path}: ROI atlas {atlas!r} holds {int(bad.sum())} values that are not whole-number labels "
                f"(e.g. {_show(vol[bad][0])} at voxel {tuple(int(i) for i in np.argwhere(bad)[0])}): use the label "
                "volume (−1 outside cortex, 0 unlabelled, k > 0 label), not a probability map"
            )
    elif not np.issubdtype(vol.dtype, np.integer):
        raise BrainattError(
            f"{path}: ROI atlas {atlas!r} has dtype {vol.dtype}, expected integer labels: re-download it"
        )
    if vol.size and (vol.min() < -32768 or vol.max() > 32767):
        raise BrainattError(f"{path}: ROI atlas {atlas!r} holds labels outside int16: re-download it")
    return vol.astype(np.int16), read_ctab(layout.ctab(atlas))


def read_hemispheres(layout: NSDLayout, subject: str, atlas: str, geometry: Geometry, ijk: np.ndarray) -> np.ndarray:
    """'lh'/'rh' per voxel: from lh./rh. atlas files when present, else from the sign of x (RAS affine)."""
    lh, rh = layout.roi(subject, atlas, "lh"), layout.roi(subject, atlas, "rh")
    affine = geometry.affine
    x = ijk @ affine[:3, :3].T[:, 0] + affine[0, 3]
    hemi = np.where(x < 0, "lh", "rh")
    if lh.exists() and rh.exists():
        in_lh = read_volume_on(lh, "hemisphere ROI", geometry)[tuple(ijk.T)] >= 0
        in_rh = read_volume_on(rh, "hemisphere ROI", geometry)[tuple(ijk.T)] >= 0
        hemi = np.where(in_lh & ~in_rh, "lh", np.where(in_rh & ~in_lh, "rh", hemi))
    return hemi.astype("U2")


def _check_beta_dtype(path: Path, dtype: np.dtype) -> None:
    if not (dtype == np.int16 or np.issubdtype(dtype, np.floating)):
        raise BrainattError(
            f"{path}: betas have dtype {dtype}, expected int16 (NSD's % signal change × 300) "
            "or float (% signal change): re-export the session"
        )


def _refuse_infinite(path: Path, betas: np.ndarray, mask: np.ndarray) -> None:
    """A float session holding ±Inf is refused: a failed fit, not a value (a NaN marks a missing one and is
    left out of the z-score). Scanned in row blocks, without a full-size temporary."""
    for r0 in range(0, len(betas), 64):
        inf = np.isinf(betas[r0 : r0 + 64])
        if inf.any():
            n = sum(int(np.isinf(betas[r : r + 64]).sum()) for r in range(r0, len(betas), 64))
            t, v = np.argwhere(inf)[0]
            ijk = tuple(int(i) for i in mask_voxel_ijk(mask)[v])
            raise BrainattError(
                f"{path}: {n} infinite betas (first at trial {r0 + t + 1}, voxel {ijk}); an infinite value would "
                "zero the voxel's whole session: re-export the session with NaN for betas that failed to fit"
            )


def session_trial_count(path: Path) -> int:
    """Number of trials in a session file, read from its header."""
    if path.name.endswith(".hdf5"):
        with _open_h5(path) as f:
            return int(_betas_dataset(f, path).shape[0])
    return int(_load_volume(path, "betas").shape[-1])


@contextlib.contextmanager
def open_image_brick(path: Path) -> Iterator[h5py.Dataset]:
    """NSD's ``nsd_stimuli.hdf5``: its ``imgBrick (73000, 425, 425, 3) uint8``, checked, open for the block."""
    if not path.exists():
        raise BrainattError(f"{path}: stimulus file not found: download nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BrainattError(f"{path}: not a readable HDF5 file ({e}): re-download it") from None
    with f:
        brick = f.get("imgBrick")
        if not isinstance(brick, h5py.Dataset) or brick.ndim != 4 or brick.shape[-1] != 3:
            got = f"{brick.dtype} {brick.shape}" if isinstance(brick, h5py.Dataset) else "no such dataset"
            raise BrainattError(
                f"{path}: expected dataset imgBrick (N,H,W,3) uint8, got {got}: re-download nsd_stimuli.hdf5"
            )
        if brick.dtype != np.uint8:
            raise BrainattError(
                f"{path}: imgBrick is {brick.dtype}, expected uint8 (0–255): images are never rescaled; "
                "convert it (a float brick in [0, 1]: round(255 × x) as uint8) or re-download nsd_stimuli.hdf5"
            )
        yield brick


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise BrainattError(f"{path}: betas file not found: download it") from None
    except OSError as e:
        raise BrainattError(
            f"{path}: not a readable HDF5 file ({e}): the file is corrupt or truncated; re-download it"
        ) from None


def _betas_dataset(f: h5py.File, path: Path) -> h5py.Dataset:
    if "betas" not in f or f["betas"].ndim != 4:
        raise BrainattError(f"{path}: expected a 4-D dataset 'betas' (trials,Z,Y,X): re-export the session")
    return f["betas"]


def _prefetch(fd: int, ds: h5py.Dataset, offset: int, z0: int, z1: int) -> None:
    """Have the kernel start reading z-planes [z0, z1) of every trial of a contiguous dataset; returns at once."""
    n, nz = ds.shape[:2]
    plane = ds.shape[2] * ds.shape[3] * ds.dtype.itemsize
    for t in range(n):
        os.posix_fadvise(fd, offset + (t * nz + z0) * plane, (z1 - z0) * plane, os.POSIX_FADV_WILLNEED)


def read_session(path: Path, mask: np.ndarray, geometry: Geometry | None = None) -> np.ndarray:
    """Betas of the voxels in ``mask`` (X,Y,Z) for every trial: ``(trials, V) float32`` in % signal change.

    HDF5 sessions are streamed in z-slabs (bounded memory, one pass over the file); NIfTI sessions are
    decompressed once, and checked against ``geometry`` (shape and affine) when given. Voxels come in
    `mask_voxel_ijk` order. A float session holding ±Inf is refused.
    """
    mask = np.asarray(mask, dtype=bool)
    if path.name.endswith(".hdf5"):
        with _open_h5(path) as f, path.open("rb") as fh:
            ds = _betas_dataset(f, path)
            _check_beta_dtype(path, ds.dtype)
            if ds.shape[1:] != mask.shape[::-1]:
                xyz = ds.shape[1:] == mask.shape and mask.shape != mask.shape[::-1]
                raise BrainattError(
                    f"{path}: betas volume (Z,Y,X) {ds.shape[1:]} does not match the mask's "
                    f"{mask.shape[::-1]}: "
                    + (
                        "it is stored in (trials,X,Y,Z) order; re-export it as NSD's (trials,Z,Y,X)"
                        if xyz
                        else "the session belongs to another subject or space; re-download it, or fix "
                        "dataset.space/betas"
                    )
                )
            mask_zyx = mask.transpose(2, 1, 0)
            zs = np.flatnonzero(mask_zyx.any((1, 2)))
            n, plane = ds.shape[0], ds.shape[2] * ds.shape[3]
            out = np.empty((n, int(mask.sum())), dtype=np.float32)
            if len(zs):
                scale = np.float32(BETA_SCALE if ds.dtype == np.int16 else 1)
                dz = max(1, SLAB_BYTES // (n * plane * ds.dtype.itemsize))
                if ds.chunks is not None and ds.chunks[0] == n:
                    dz = min(dz, ds.chunks[1])  # chunks hold time series: one chunk layer per read
                dz = min(dz, zs[-1] + 1 - zs[0])
                offset = ds.id.get_offset() if hasattr(os, "posix_fadvise") else None  # None unless contiguous
                buf = np.empty(n * dz * plane, dtype=ds.dtype)  # one slab buffer, reused
                col = 0
                for z0 in range(zs[0], zs[-1] + 1, dz):
                    z1 = min(z0 + dz, zs[-1] + 1)
                    if offset is not None and z1 <= zs[-1]:  # the kernel reads the next slab while we process this one
                        _prefetch(fh.fileno(), ds, offset, z1, min(z1 + dz, zs[-1] + 1))
                    slab = buf[: n * (z1 - z0) * plane].reshape(n, z1 - z0, *ds.shape[2:])
                    ds.read_direct(slab, np.s_[:, z0:z1])
                    idx = np.flatnonzero(mask_zyx[z0:z1])
                    # int16 → float32 / 300 in one pass, straight into the output
                    np.divide(np.take(slab.reshape(n, -1), idx, axis=1), scale, out=out[:, col : col + len(idx)])
                    col += len(idx)
            if ds.dtype != np.int16:
                _refuse_infinite(path, out, mask)
            return out  # already scaled
    else:
        img = _load_volume(path, "betas")
        if geometry is not None and img.ndim == 4:
            geometry.check(path, "the betas volume", img.shape[:3], img.affine)
        if img.ndim != 4 or img.shape[:3] != mask.shape:
            raise BrainattError(
                f"{path}: betas volume {img.shape} does not match the mask {mask.shape} + trials: "
                "the session belongs to another subject or space; re-download it, or fix dataset.space/betas"
            )
        data = np.asanyarray(img.dataobj)
        _check_beta_dtype(path, data.dtype)
        dtype = data.dtype
        # C order, as from HDF5: the z-score's sums then round identically for both formats
        out = np.ascontiguousarray(data.transpose(3, 2, 1, 0)[:, mask.transpose(2, 1, 0)], dtype=np.float32)
        del data
    if dtype == np.int16:
        out /= BETA_SCALE
    else:
        _refuse_infinite(path, out, mask)
    return out
