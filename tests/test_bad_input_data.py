"""Bad data at the door: a corpus of malformed inputs, each built from the tiny nsd-synth world.

Every refused case must give exactly one ``brainatt: error:`` line (the last line on stderr) naming the file that
is wrong, exit 2, and leave no output and no temporary. What a user may intend (a session missing at the end, an
atlas that labels nothing, constant voxels, NaN ncsnr at some voxels) runs to the end with a warning in the log and
a count in ``prep.tsv``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from conftest import rewrite_betas

from brainatt.cli import main
from brainatt.contracts.features import features_writer
from brainatt.contracts.responses import WARNING_KINDS
from brainatt.models.spec import ModelSpec
from brainatt.nsd.layout import NSDLayout
from brainatt.prep.responses import preprocess_subject
from brainatt.prep.stimuli import write_stimuli

BETAS = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
ROI = "nsddata/ppdata/subj01/func1pt8mm/roi"
BRAINMASK = "nsddata/ppdata/subj01/func1pt8mm/brainmask.nii.gz"
NCSNR = f"{BETAS}/ncsnr.nii.gz"
DESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
BRICK = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
CAPTIONS = "nsddata_stimuli/stimuli/nsd/annotations/captions_train2017.json"
ATLASES = ["prf-visualrois", "floc-faces", "nsdgeneral"]
BACKBONE = ModelSpec(role="backbone", name="test-backbone", layers=(1,))


# ----------------------------------------------------------------------------------------------- the inputs


@dataclass
class Inputs:
    """A private copy of the tiny world plus the stage files later stages read, free to corrupt."""

    world: Path
    responses: Path
    images: Path
    features: Path
    out: Path  # an empty folder the command writes into


@pytest.fixture(scope="module")
def stage_files(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """responses.h5 (subj01), images.h5 and a small backbone feature file made from the tiny world, once."""
    d = tmp_path_factory.mktemp("stage")
    preprocess_subject(NSDLayout(tiny_world), "subj01", d / "responses.h5", ["nsdgeneral"], ATLASES)
    write_stimuli(NSDLayout(tiny_world), ["subj01", "subj02"], d / "images.h5")
    with h5py.File(d / "images.h5") as f:
        ids = f["nsd_ids"][()]
    rng = np.random.default_rng(0)
    with features_writer(d / "features.h5", {}, ids, BACKBONE, (2, 2), "test") as w:
        w.write(0, {"pooled": rng.normal(size=(len(ids), 8)), 1: rng.normal(size=(len(ids), 2, 2, 8))})
    return d


@pytest.fixture
def inputs(tiny_world: Path, stage_files: Path, tmp_path: Path) -> Inputs:
    world = Path(shutil.copytree(tiny_world, tmp_path / "nsd", ignore=shutil.ignore_patterns("ground_truth")))
    stage = Path(shutil.copytree(stage_files, tmp_path / "stage"))
    (tmp_path / "out").mkdir()
    return Inputs(world, stage / "responses.h5", stage / "images.h5", stage / "features.h5", tmp_path / "out")


# ------------------------------------------------------------------------------------------------ commands


def preprocess(x: Inputs) -> list[str]:
    return ["preprocess", "--root", str(x.world), "--subject", "subj01", "--atlases", *ATLASES,
            "--out", str(x.out / "responses.h5")]  # fmt: skip


def stimuli(x: Inputs) -> list[str]:
    return ["stimuli", "--root", str(x.world), "--subjects", "subj01", "subj02", "--out", str(x.out / "images.h5")]


def prep_summary(x: Inputs) -> list[str]:
    return ["prep-summary", "--responses", str(x.responses), "--table", str(x.out / "prep.tsv"),
            "--figure", str(x.out / "prep.png")]  # fmt: skip


def encode(x: Inputs) -> list[str]:
    return ["encode", "--responses", str(x.responses), "--features", str(x.features), "--encoder", "ridge_pooled",
            "--out", str(x.out / "ridge_pooled")]  # fmt: skip


def features(x: Inputs) -> list[str]:
    return ["features", "--stimuli", str(x.images), "--model", '{"name": "kit:clip", "source": "open_clip"}',
            "--out", str(x.out / "features.h5")]  # fmt: skip


# -------------------------------------------------------------------------------------------- file surgery


def _nii(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def _save_nii(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _edit_volume(path: Path, change: Callable[[np.ndarray], np.ndarray], shift_mm: float = 0.0) -> None:
    img = _nii(path)
    affine = img.affine.copy()
    affine[0, 3] += shift_mm
    _save_nii(path, change(np.asarray(img.dataobj)), affine)


def _to_nifti_session(world: Path, session: int, change: Callable[[np.ndarray], np.ndarray], shift_mm: float = 0):
    """Replace an HDF5 session by a .nii.gz of the same betas (X,Y,Z,T), changed, on the brain mask's affine."""
    h5 = world / BETAS / f"betas_session{session:02d}.hdf5"
    with h5py.File(h5) as f:
        data = f["betas"][()].transpose(3, 2, 1, 0)
    h5.unlink()
    affine = _nii(world / BRAINMASK).affine.copy()
    affine[0, 3] += shift_mm
    path = world / BETAS / f"betas_session{session:02d}.nii.gz"
    _save_nii(path, change(data), affine)
    return path


def _mask_voxel(world: Path) -> tuple[int, int, int]:
    """(i,j,k) of a voxel inside nsdgeneral."""
    roi = np.asarray(_nii(world / ROI / "nsdgeneral.nii.gz").dataobj)
    return tuple(int(v) for v in np.argwhere(roi == 1)[0])


def _float_with(data: np.ndarray, ijk: tuple[int, int, int], trial: int, value: float) -> np.ndarray:
    """Float % signal change (h5py order trials,Z,Y,X) with one beta set to ``value``."""
    pct = data.astype(np.float32) / 300
    pct[trial, ijk[2], ijk[1], ijk[0]] = value
    return pct


def _design(world: Path) -> dict[str, np.ndarray]:
    mat = scipy.io.loadmat(str(world / DESIGN))
    return {k: mat[k] for k in ("masterordering", "subjectim", "sharedix")}


def _write_design(world: Path, **change: Callable[[np.ndarray], np.ndarray] | None) -> None:
    mat = _design(world)
    for key, fn in change.items():
        if fn is None:
            del mat[key]
        else:
            mat[key] = fn(mat[key].copy())
    buf = io.BytesIO()
    scipy.io.savemat(buf, mat)
    (world / DESIGN).write_bytes(buf.getvalue())


def _edit_brick(world: Path, change: Callable[[np.ndarray], np.ndarray], name: str = "imgBrick") -> None:
    path = world / BRICK
    with h5py.File(path) as f:
        brick = f["imgBrick"][()]
    with h5py.File(path, "w") as f:
        f[name] = change(brick)


def _edit_table(world: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = world / STIM_INFO
    change(pd.read_csv(path, index_col=0)).to_csv(path)


def _edit_captions(world: Path, change: Callable[[dict], object]) -> None:
    path = world / CAPTIONS
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _truncate(path: Path, fraction: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])


def _edit_h5(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        change(f)


# ------------------------------------------------------------------------------------------------- the corpus

Where = Callable[[Inputs], Path]
Edit = Callable[[Inputs, Path], object]


@dataclass(frozen=True)
class Case:
    """One malformed input: ``edit`` corrupts the file ``where`` names; the message must start with that file and
    hold each of ``words`` (what is wrong, what to do; a callable gets the inputs)."""

    cls: str
    name: str
    command: Callable[[Inputs], list[str]]
    where: Where
    edit: Edit
    words: list[str] | Callable[[Inputs], list[str]]


def world(rel: str) -> Where:
    return lambda x: x.world / rel


def roi(atlas: str) -> Where:
    return world(f"{ROI}/{atlas}.nii.gz")


def session(k: int, suffix: str = "hdf5") -> Where:
    return world(f"{BETAS}/betas_session{k:02d}.{suffix}")


def volume(change: Callable[[np.ndarray], np.ndarray], shift_mm: float = 0.0) -> Edit:
    return lambda x, p: _edit_volume(p, change, shift_mm)


def betas(change: Callable[[np.ndarray], np.ndarray]) -> Edit:
    return lambda x, p: rewrite_betas(p, change)


def design(**change: Callable[[np.ndarray], np.ndarray] | None) -> Edit:
    return lambda x, p: _write_design(x.world, **change)


def brick(change: Callable[[np.ndarray], np.ndarray], name: str = "imgBrick") -> Edit:
    return lambda x, p: _edit_brick(x.world, change, name)


def table(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Edit:
    return lambda x, p: _edit_table(x.world, change)


def coco(change: Callable[[dict], object]) -> Edit:
    return lambda x, p: _edit_captions(x.world, change)


def h5(change: Callable[[h5py.File], object]) -> Edit:
    return lambda x, p: _edit_h5(p, change)


def write(data: bytes) -> Edit:
    return lambda x, p: p.write_bytes(data)


def cut(x: Inputs, p: Path) -> None:
    _truncate(p, 0.6)


def _at_mask(world: Path, value: float, every: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """ncsnr with ``value`` at the first mask voxel (every mask voxel when ``every``)."""
    roi = np.asarray(_nii(world / ROI / "nsdgeneral.nii.gz").dataobj) > 0

    def fn(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float32)
        if every:
            v[roi] = value
        else:
            v[_mask_voxel(world)] = value
        return v

    return fn


def ncsnr_at_mask(value: float, every: bool = False) -> Edit:
    return lambda x, p: _edit_volume(p, _at_mask(x.world, value, every))


def _set(index: tuple[int, ...], value: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a

    return fn


def _copy_from(index: tuple[int, int], source: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: _set(index, a[source])(a)


def _inf_in_nifti_session(x: Inputs, p: Path) -> None:
    ijk = _mask_voxel(x.world)

    def change(xyzt: np.ndarray) -> np.ndarray:
        pct = xyzt.astype(np.float32) / 300
        pct[(*ijk, 0)] = -np.inf
        return pct

    _to_nifti_session(x.world, 4, change)


def _train_id(x: Inputs) -> int:
    """An nsd id of subj01's training split."""
    with h5py.File(x.responses) as f:
        return int(f["train/nsd_ids"][4])


def _no_repeats(x: Inputs, p: Path) -> None:
    """One session whose 48 trials show 48 different images, and no ncsnr.nii.gz."""
    for k in range(2, 6):
        session(k)(x).unlink()
    p.unlink()
    _write_design(x.world, masterordering=lambda m: np.concatenate([np.arange(1, 49), m[0, 48:]])[None])


GEOMETRY_FIX = ["another space", "nothing is resampled"]
AFFINE_FIX = ["but another affine (off by up to 1.8", "nothing is resampled"]

GEOMETRY = [
    Case("geometry", "atlas from a larger space", preprocess, roi("floc-faces"),
         volume(lambda v: np.pad(v, ((0, 2), (0, 0), (0, 0)), constant_values=-1)),
         ["ROI atlas 'floc-faces' is (25, 14, 16) voxels but the brain mask brainmask.nii.gz is (23, 14, 16)",
          *GEOMETRY_FIX]),
    Case("geometry", "atlas smaller than the mask", preprocess, roi("prf-visualrois"), volume(lambda v: v[:-3]),
         ["ROI atlas 'prf-visualrois' is (20, 14, 16) voxels", *GEOMETRY_FIX]),
    Case("geometry", "mask atlas transposed", preprocess, roi("nsdgeneral"), volume(lambda v: v.transpose(2, 1, 0)),
         ["ROI atlas 'nsdgeneral' is (16, 14, 23) voxels", *GEOMETRY_FIX]),
    Case("geometry", "atlas on another grid (affine)", preprocess, roi("floc-faces"), volume(lambda v: v, 1.8),
         ["ROI atlas 'floc-faces' has the brain mask's shape", *AFFINE_FIX]),
    Case("geometry", "hemisphere atlas from another space", preprocess, roi("lh.nsdgeneral"),
         volume(lambda v: v[:, :-1]), ["hemisphere ROI is (23, 13, 16) voxels", *GEOMETRY_FIX]),
    Case("geometry", "ncsnr from another space", preprocess, world(NCSNR), volume(lambda v: v[..., :-2]),
         ["ncsnr is (23, 14, 14) voxels", *GEOMETRY_FIX]),
    Case("geometry", "ncsnr on another grid (affine)", preprocess, world(NCSNR), volume(lambda v: v, 1.8),
         ["ncsnr has the brain mask's shape", *AFFINE_FIX]),
    Case("geometry", "NIfTI session on another grid (affine)", preprocess, session(2, "nii.gz"),
         lambda x, p: _to_nifti_session(x.world, 2, lambda d: d, shift_mm=-1.8),
         ["the betas volume has the brain mask's shape", *AFFINE_FIX]),
    Case("geometry", "NIfTI session from another space", preprocess, session(3, "nii.gz"),
         lambda x, p: _to_nifti_session(x.world, 3, lambda d: d[:, :, 1:]),
         ["the betas volume is (23, 14, 15) voxels", *GEOMETRY_FIX]),
    Case("geometry", "HDF5 session in (X,Y,Z) order", preprocess, session(1), betas(lambda d: d.transpose(0, 3, 2, 1)),
         ["(Z,Y,X) (23, 14, 16) does not match the mask's (16, 14, 23)", "stored in (trials,X,Y,Z) order"]),
    Case("geometry", "brain mask is 4-D", preprocess, world(BRAINMASK), volume(lambda v: v[..., None].repeat(2, -1)),
         ["the brain mask is (23, 14, 16, 2), expected a 3-D volume"]),
]  # fmt: skip

DTYPES = [
    Case("dtype/range", "betas stored as bool", preprocess, session(2), betas(lambda d: d > 0),
         ["betas have dtype bool, expected int16", "re-export the session"]),
    Case("dtype/range", "betas stored as uint16", preprocess, session(5), betas(lambda d: d.astype(np.uint16)),
         ["betas have dtype uint16", "re-export the session"]),
    Case("dtype/range", "atlas as a probability map", preprocess, roi("floc-faces"),
         volume(lambda v: v.astype(np.float32) * 0.3), ["not whole-number labels", "not a probability map"]),
    Case("dtype/range", "atlas holding NaN", preprocess, roi("prf-visualrois"),
         volume(lambda v: np.where(v == 0, np.nan, v).astype(np.float32)), ["not whole-number labels (e.g. nan"]),
    Case("dtype/range", "imgBrick float in [0, 1]", stimuli, world(BRICK),
         brick(lambda b: (b / 255).astype(np.float32)),
         ["imgBrick is float32, expected uint8 (0–255)", "round(255 × x)"]),
    Case("dtype/range", "imgBrick uint16", stimuli, world(BRICK), brick(lambda b: b.astype(np.uint16) * 257),
         ["imgBrick is uint16, expected uint8"]),
    Case("dtype/range", "imgBrick grey (no colour axis)", stimuli, world(BRICK), brick(lambda b: b[..., 0]),
         ["expected dataset imgBrick (N,H,W,3) uint8, got uint8 (140, 32, 32)"]),
    Case("dtype/range", "imgBrick missing", stimuli, world(BRICK), brick(lambda b: b, name="images"),
         ["got no such dataset", "re-download nsd_stimuli.hdf5"]),
    Case("dtype/range", "ncsnr negative", preprocess, world(NCSNR), ncsnr_at_mask(-0.5),
         ["1 negative or infinite values (e.g. -0.5 at voxel", "delete it to estimate ncsnr from the repeats"]),
    Case("dtype/range", "ncsnr all NaN", preprocess, world(NCSNR), ncsnr_at_mask(np.nan, every=True),
         ["ncsnr is NaN at all", "voxels of the mask"]),
]  # fmt: skip

FINITE = [
    Case("finiteness", "one +Inf beta (HDF5, float)", preprocess, session(3),
         lambda x, p: rewrite_betas(p, lambda d: _float_with(d, _mask_voxel(x.world), 7, np.inf)),
         lambda x: [f"1 infinite betas (first at trial 8, voxel {_mask_voxel(x.world)})", "would zero",
                    "re-export the session with NaN"]),
    Case("finiteness", "one -Inf beta (NIfTI, float)", preprocess, session(4, "nii.gz"), _inf_in_nifti_session,
         lambda x: [f"1 infinite betas (first at trial 1, voxel {_mask_voxel(x.world)})", "re-export"]),
    Case("finiteness", "ncsnr +Inf", preprocess, world(NCSNR), ncsnr_at_mask(np.inf),
         ["negative or infinite values (e.g. inf"]),
    Case("finiteness", "Inf in a feature file's pooled embeddings", encode, lambda x: x.features,
         lambda x, p: _edit_h5(p, lambda f: f["pooled"].__setitem__((list(f["nsd_ids"]).index(_train_id(x)), 2),
                                                                    np.inf)),
         lambda x: [f"pooled holds NaN or infinite values for 1 images (e.g. nsd id {_train_id(x)})",
                    "rerun the features rule"]),
    Case("finiteness", "NaN in responses.h5 train/betas", encode, lambda x: x.responses,
         h5(lambda f: f["train/betas"].__setitem__((3, 5), np.nan)),
         ["train/betas holds 1 NaN or infinite values (first at image row 3, voxel 5)", "rerun the preprocess rule"]),
]  # fmt: skip

DESIGN_CASES = [
    Case("design", "subjectim lists an image twice", preprocess, world(DESIGN),
         design(subjectim=_copy_from((0, 30), (0, 31))),
         ["subjectim row 1 (subj01) lists nsd id", "columns 31 and 32", "averaged as repeats"]),
    Case("design", "sharedix lists an image twice", stimuli, world(DESIGN), design(sharedix=_copy_from((0, 4), (0, 2))),
         ["sharedix lists nsd id", "at 3 and 5", "the test split would hold it twice"]),
    Case("design", "masterordering beyond subjectim", preprocess, world(DESIGN),
         design(masterordering=_set((0, 10), 81)), ["masterordering[11] = 81 but subjectim lists 80 images"]),
    Case("design", "masterordering 0-based", preprocess, world(DESIGN), design(masterordering=lambda m: m - 1),
         ["masterordering holds", "1-based whole numbers"]),
    Case("design", "subjectim not whole numbers", stimuli, world(DESIGN), design(subjectim=_set((1, 7), 12.5)),
         ["subjectim holds 12.5 at (1-based) (2, 8)"]),
    Case("design", "sharedix empty", preprocess, world(DESIGN), design(sharedix=lambda s: s[:, :0]),
         ["sharedix is empty or not numeric"]),
    Case("design", "design lacks sharedix", preprocess, world(DESIGN), design(sharedix=None),
         ["design lacks 'sharedix'"]),
    Case("design", "design file garbage", preprocess, world(DESIGN), write(b"not a mat file" * 20),
         ["cannot read the design", "re-download nsd_expdesign.mat"]),
    Case("design", "nsd id beyond the image brick", stimuli, world(DESIGN), design(subjectim=_set((0, 40), 5000)),
         ["the design shows nsd id 4999 but imgBrick of", "holds 140 images", "do not belong together"]),
    Case("design", "first session shorter", preprocess, session(1), betas(lambda d: d[:40]),
         ["40 trials, but 4 of the 5 sessions (e.g. betas_session02.hdf5) hold 48"]),
    Case("design", "last session longer", preprocess, session(5), betas(lambda d: np.concatenate([d, d[:2]])),
         ["50 trials, but 4 of the 5 sessions (e.g. betas_session01.hdf5) hold 48"]),
    Case("design", "more sessions than the design", preprocess, session(6),
         lambda x, p: shutil.copy(session(5)(x), p), ["288 trials on disk but the design lists 240"]),
    Case("design", "session missing in the middle", preprocess, session(3), lambda x, p: p.unlink(),
         ["session file missing (found sessions [1, 2, 4, 5])"]),
    Case("design", "no repeats and no ncsnr", preprocess, world(NCSNR), _no_repeats,
         ["not found, and no image is shown twice in the 1 sessions", "download ncsnr.nii.gz"]),
]  # fmt: skip

TABLE = [
    Case("stimulus table", "empty CSV (0 bytes)", stimuli, world(STIM_INFO), write(b""),
         ["the stimulus table is empty"]),
    Case("stimulus table", "header only", stimuli, world(STIM_INFO), table(lambda t: t.iloc[:0]),
         ["has a header but no rows"]),
    Case("stimulus table", "duplicated nsdId row", stimuli, world(STIM_INFO),
         table(lambda t: pd.concat([t.iloc[:10], t.iloc[[3]], t.iloc[10:]])),
         ["nsdId 3 has two rows (data rows 4 and 11)", "ambiguous"]),
    Case("stimulus table", "nsdId not a number", stimuli, world(STIM_INFO),
         table(lambda t: t.assign(nsdId=t["nsdId"].astype(object).where(t.index != 6, "x"))),
         ["nsdId 'x' on data row 7 is not a 0-based whole number"]),
    Case("stimulus table", "no nsdId column", stimuli, world(STIM_INFO),
         table(lambda t: t.rename(columns={"nsdId": "nsd_id"})), ["no nsdId column"]),
    Case("stimulus table", "a seen image not listed", stimuli, world(STIM_INFO), table(lambda t: t.drop(index=0)),
         ["no row for nsd id 0", "do not belong together"]),
    Case("stimulus table", "cocoId missing", stimuli, world(STIM_INFO),
         table(lambda t: t.assign(cocoId=t["cocoId"].where(t.index != 2))),
         ["cocoId nan on data row 3 (nsdId 2) is not a whole number"]),
    Case("stimulus table", "unreadable CSV (open quote)", stimuli, world(STIM_INFO),
         write(b'nsdId,cocoId\n0,"100000\n1,100001\n'), ["not a readable CSV table"]),
]  # fmt: skip

CAPTION_CASES = [
    Case("captions", "empty captions file", stimuli, world(CAPTIONS), write(b""), ["the captions file is empty"]),
    Case("captions", "truncated captions JSON", stimuli, world(CAPTIONS), cut,
         ["not valid JSON (", "at line 1, column", "re-download the COCO"]),
    Case("captions", "a list, not a COCO object", stimuli, world(CAPTIONS), coco(lambda c: c["annotations"]),
         ["no 'annotations' list"]),
    Case("captions", "annotation without caption", stimuli, world(CAPTIONS),
         coco(lambda c: (c["annotations"][5].pop("caption"), c)[1]),
         ["annotation 5 lacks an integer 'image_id' and a string 'caption'"]),
    Case("captions", "image_id as text", stimuli, world(CAPTIONS),
         coco(lambda c: (c["annotations"][0].update(image_id="100000"), c)[1]),
         ["annotation 0 lacks an integer 'image_id'"]),
]  # fmt: skip

RESPONSES_FIX = "rerun the preprocess rule for this subject"
STAGE = [
    Case("stage files", "truncated responses.h5 → prep-summary", prep_summary, lambda x: x.responses, cut,
         ["not a readable HDF5 file", "truncated", RESPONSES_FIX]),
    Case("stage files", "truncated responses.h5 → encode", encode, lambda x: x.responses, cut,
         ["not a readable HDF5 file", RESPONSES_FIX]),
    Case("stage files", "empty responses.h5 → encode", encode, lambda x: x.responses, write(b""),
         ["not a readable HDF5 file", RESPONSES_FIX]),
    Case("stage files", "responses.h5 without voxels/ncsnr", prep_summary, lambda x: x.responses,
         h5(lambda f: f.__delitem__("voxels/ncsnr")), ["no 'voxels/ncsnr'", RESPONSES_FIX]),
    Case("stage files", "truncated features.h5 → encode", encode, lambda x: x.features, cut,
         ["not a readable HDF5 file", "rerun the features rule"]),
    Case("stage files", "features.h5 without pooled → encode", encode, lambda x: x.features,
         h5(lambda f: f.__delitem__("pooled")), ["no 'pooled'", "rerun the features rule"]),
    Case("stage files", "feature file listing an image twice → encode", encode, lambda x: x.features,
         h5(lambda f: f["nsd_ids"].__setitem__(1, f["nsd_ids"][0])), ["nsd_ids lists an image twice"]),
    Case("stage files", "truncated images.h5 → features", features, lambda x: x.images, cut,
         ["not a readable HDF5 file", "rerun the stimuli rule"]),
]  # fmt: skip

CORPUS = GEOMETRY + DTYPES + FINITE + DESIGN_CASES + TABLE + CAPTION_CASES + STAGE


def _outputs_left(out: Path) -> list[Path]:
    """Everything under the output folder (outputs, hidden temporaries, folders)."""
    return sorted(out.rglob("*")) + sorted(out.rglob(".*"))


@pytest.mark.parametrize("case", CORPUS, ids=[f"{c.cls}: {c.name}" for c in CORPUS])
def test_refused(case: Case, inputs: Inputs, capsys: pytest.CaptureFixture) -> None:
    bad = case.where(inputs)
    case.edit(inputs, bad)
    words = case.words(inputs) if callable(case.words) else case.words
    argv = case.command(inputs)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.rstrip("\n").split("\n")
    errors = [line for line in err if line.startswith("brainatt: error:")]
    assert code == 2, err
    assert len(errors) == 1 and err[-1] == errors[0], err  # one line, nothing after it (no traceback)
    line = errors[0]
    assert f"brainatt: error: {bad}: " in line, line  # the file that is wrong, first
    for w in words:
        assert w in line, (w, line)
    assert not _outputs_left(inputs.out), _outputs_left(inputs.out)  # no output, no temporary


def test_corpus_covers_every_class() -> None:
    classes = {c.cls for c in CORPUS}
    assert classes == {"geometry", "dtype/range", "finiteness", "design", "stimulus table", "captions", "stage files"}
    assert all(sum(c.cls == k for c in CORPUS) >= 4 for k in classes)


def test_refused_by_the_command(inputs: Inputs) -> None:
    """The installed entry point, as Snakemake calls it: exit status 2, the one line last on stderr."""
    (inputs.world / STIM_INFO).write_bytes(b"")
    argv = stimuli(inputs)
    run = subprocess.run([sys.executable, "-m", "brainatt", *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    last = run.stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"brainatt: error: {inputs.world / STIM_INFO}: the stimulus table is empty"), run.stderr
    assert "Traceback" not in run.stderr and not _outputs_left(inputs.out)


# --------------------------------------------------------------------------------------- warnings, not errors


def _constant_voxel(x: Inputs) -> None:
    ijk = _mask_voxel(x.world)
    for k in range(1, 6):
        path = x.world / BETAS / f"betas_session{k:02d}.hdf5"

        def flat(d: np.ndarray) -> np.ndarray:
            d[:, ijk[2], ijk[1], ijk[0]] = 42
            return d

        rewrite_betas(path, flat)


WARNINGS = [
    ("clean", lambda x: None, {}, []),
    ("session missing at the end", lambda x: (x.world / BETAS / "betas_session05.hdf5").unlink(),
     {"sessions_missing": 1}, ["4 sessions on disk, the design holds 5 of 48 trials", "session 5 is missing"]),
    ("atlas labels no voxel", lambda x: _edit_volume(x.world / ROI / "floc-faces.nii.gz", lambda v: np.minimum(v, 0)),
     {"empty_atlases": 1}, ["atlas 'floc-faces' labels none of the"]),
    ("empty label table", lambda x: (x.world / "nsddata/freesurfer/fsaverage/label/floc-faces.mgz.ctab").write_text(
        "0 Unknown\n"), {"empty_atlases": 1}, ["atlas 'floc-faces' has an empty label table"]),
    ("constant voxel", _constant_voxel, {"constant_voxels": 1},
     ["1 voxels (e.g. (", "are constant in every session", "ncsnr 0 (noise ceiling 0)"]),
    ("ncsnr NaN at a voxel", lambda x: ncsnr_at_mask(np.nan)(x, x.world / NCSNR), {"ncsnr_nan_voxels": 1},
     ["ncsnr is NaN at 1 of", "they get ncsnr 0"]),
]  # fmt: skip


@pytest.mark.parametrize("make, counts, words", [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warned_and_counted(
    inputs: Inputs, caplog: pytest.LogCaptureFixture, make: Callable, counts: dict[str, int], words: list[str]
) -> None:
    make(inputs)
    responses = inputs.out / "responses.h5"
    with caplog.at_level(logging.WARNING):
        assert main(preprocess(inputs)) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("brainatt")]
    assert len(warned) == len(counts), warned  # one warning line per kind here
    for w in words:
        assert any(w in m for m in warned), (w, warned)
    table = inputs.out / "prep.tsv"
    summary = ["prep-summary", "--responses", str(responses), "--table", str(table), "--figure", str(table) + ".png"]
    assert main(summary) == 0
    row = pd.read_csv(table, sep="\t").iloc[0]
    assert {k: int(row[k]) for k in WARNING_KINDS} == {k: counts.get(k, 0) for k in WARNING_KINDS}
    with h5py.File(responses) as f:
        nc, ncsnr, ijk = f["voxels/nc_test"][()], f["voxels/ncsnr"][()], f["voxels/ijk"][()]
    assert np.isfinite(nc).all() and np.isfinite(ncsnr).all()
    if "constant_voxels" in counts or "ncsnr_nan_voxels" in counts:  # dropped: NC 0, not kept with NC > 0
        v = int(np.flatnonzero((ijk == _mask_voxel(inputs.world)).all(1))[0])
        assert nc[v] == 0 and ncsnr[v] == 0
        # every other voxel keeps the NC of the file's ncsnr (an estimate: 0 where the repeats show no signal)
        with_signal = np.asarray(nib.load(inputs.world / NCSNR).dataobj)[tuple(ijk.T)] > 0
        with_signal[v] = False
        assert ((nc > 0) == with_signal).all()
