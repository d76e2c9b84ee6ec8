"""``results/prep/{subject}/responses.h5``: a subject's responses, one writer and one reader for every stage.

Layout (DESIGN.md, "Data contracts"):

- ``train/`` and ``test/``: ``betas (n, V) float32`` (z-scored, repeat-averaged), ``nsd_ids (n,) int64``
  (0-based), ``n_reps (n,) int64`` (trials averaged; 0 = unknown);
- ``trials/``: ``betas (n_trials, V) float16``, ``nsd_ids``, ``session`` (1-based), 0 rows where a dataset has no
  single trials (Algonauts);
- ``voxels/``: ``hemi (V,)`` ('lh' | 'rh'), ``roi/<atlas> (V,) int`` and ``roi_names/<atlas>`` ("code:name"),
  ``ncsnr (V,)``, ``nc_test (V,)`` in %; for volume data ``ijk (V,3)``, ``affine (4,4)``, ``mask_shape (3,)``; for
  surface data ``vertex (V,)``; optionally ``ncsnr_estimated``. ``ncsnr``, ``nc_test`` and ``n_reps`` may carry an
  attr ``source`` saying where the values come from;
- attrs: the stamp every output carries (`brainatt.io.stamp`), ``subject`` and ``warnings`` (JSON: count per kind
  of warning the preprocessing gave, e.g. ``{"constant_voxels": 3, "sessions_missing": 1}``; absent in files
  written before it existed).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt.io import BrainattError, atomic_h5, open_h5

SPLITS = ("train", "test")
# the kinds of warning the preprocessing counts (attr ``warnings``; prep.tsv has a column for each)
WARNING_KINDS = ("sessions_missing", "empty_atlases", "constant_voxels", "ncsnr_nan_voxels")
FIX = "rerun the preprocess rule for this subject"


@dataclass
class Split:
    """Repeat-averaged responses of one split; ``betas`` is None when read without them."""

    nsd_ids: np.ndarray
    n_reps: np.ndarray
    betas: np.ndarray | None = None


@dataclass
class Trials:
    """Single-trial responses in presentation order."""

    betas: np.ndarray  # (n_trials, V) float16
    nsd_ids: np.ndarray
    session: np.ndarray


@dataclass
class Voxels:
    """What each response column is: hemisphere, ROI labels, noise ceiling and, for volume data, where it lies."""

    hemi: np.ndarray  # (V,) str
    rois: dict[str, np.ndarray]  # atlas → (V,) code
    roi_names: dict[str, dict[int, str]]  # atlas → code → name
    ncsnr: np.ndarray
    nc_test: np.ndarray  # %
    ijk: np.ndarray | None = None
    affine: np.ndarray | None = None
    mask_shape: tuple[int, int, int] | None = None
    vertex: np.ndarray | None = None
    ncsnr_estimated: np.ndarray | None = None
    sources: dict[str, str] = field(default_factory=dict)  # 'ncsnr' / 'nc_test' → where the values come from

    @property
    def n(self) -> int:
        return len(self.hemi)

    @property
    def has_volume(self) -> bool:
        return self.ijk is not None


@dataclass
class Responses:
    path: Path
    subject: str
    train: Split
    test: Split
    voxels: Voxels
    trial_session: np.ndarray  # (n_trials,) scan session of each single trial (`read_trials` reads the betas)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)  # kind → count, from the preprocessing

    @property
    def n_voxels(self) -> int:
        return self.voxels.n


class ResponsesWriter:
    """Fills a ``responses.h5`` opened by `responses_writer`; every part must be written before the block ends."""

    def __init__(self, f: h5py.File) -> None:
        self.f = f

    def split(
        self, name: str, nsd_ids: np.ndarray, n_reps: np.ndarray, betas: np.ndarray | None = None, n_voxels: int = 0
    ) -> h5py.Dataset:
        """Write a split's index and its betas; without ``betas``, return an empty ``(n, n_voxels)`` dataset to fill."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        self.f[f"{name}/nsd_ids"] = np.asarray(nsd_ids, np.int64)
        self.f[f"{name}/n_reps"] = np.asarray(n_reps, np.int64)
        if betas is not None:
            self.f[f"{name}/betas"] = np.asarray(betas, np.float32)
        else:
            self.f.create_dataset(f"{name}/betas", (len(nsd_ids), n_voxels), np.float32)
        return self.f[f"{name}/betas"]

    def trials(self, n_trials: int, n_voxels: int, chunk_rows: int = 256) -> h5py.Dataset:
        """An empty ``(n_trials, V) float16`` single-trial dataset to fill, chunked by rows."""
        chunks = (max(1, min(n_trials, chunk_rows)), max(1, min(n_voxels, 1024))) if n_trials else None
        return self.f.create_dataset("trials/betas", (n_trials, n_voxels), np.float16, chunks=chunks)

    def trial_index(self, nsd_ids: np.ndarray, session: np.ndarray) -> None:
        self.f["trials/nsd_ids"] = np.asarray(nsd_ids, np.int64)
        self.f["trials/session"] = np.asarray(session, np.int64)

    def warnings(self, counts: dict[str, int]) -> None:
        """Count per kind of warning the preprocessing gave (kinds with 0 included, so a reader can tell 0 from
        not counted)."""
        self.f.attrs["warnings"] = json.dumps({k: int(v) for k, v in counts.items()}, sort_keys=True)

    def voxels(self, v: Voxels) -> None:
        g = self.f.create_group("voxels")
        g["hemi"] = np.asarray(v.hemi).astype("S2")
        for atlas, codes in v.rois.items():
            g[f"roi/{atlas}"] = codes
            g[f"roi_names/{atlas}"] = np.array([f"{k}:{n}" for k, n in sorted(v.roi_names[atlas].items())], dtype="S")
        g["ncsnr"] = np.asarray(v.ncsnr, np.float32)
        g["nc_test"] = np.asarray(v.nc_test, np.float32)
        optional = {"ijk": v.ijk, "affine": v.affine, "vertex": v.vertex, "ncsnr_estimated": v.ncsnr_estimated}
        for key, value in optional.items():
            if value is not None:
                g[key] = value
        if v.mask_shape is not None:
            g["mask_shape"] = np.array(v.mask_shape)
        for key, source in v.sources.items():
            g[key].attrs["source"] = source


@contextlib.contextmanager
def responses_writer(path: str | Path, subject: str, config: dict[str, Any], units: str) -> Iterator[ResponsesWriter]:
    """Write a ``responses.h5`` atomically: it appears at ``path`` only when the block completes with every part."""
    with atomic_h5(path, config, units) as f:
        f.attrs["subject"] = subject
        yield ResponsesWriter(f)
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise ValueError(f"responses.h5 left incomplete: {missing} not written")


REQUIRED = (
    *(f"{s}/{k}" for s in SPLITS for k in ("betas", "nsd_ids", "n_reps")),
    "trials/betas",
    "trials/nsd_ids",
    "trials/session",
    "voxels/hemi",
    "voxels/ncsnr",
    "voxels/nc_test",
)


def _open(path: Path) -> contextlib.AbstractContextManager[h5py.File]:
    return open_h5(path, "responses file", FIX)


def _check_split(path: Path, name: str, split: Split, shape: tuple[int, ...]) -> None:
    n = len(split.nsd_ids)
    if len(shape) != 2 or shape[0] != n or len(split.n_reps) != n:
        raise BrainattError(
            f"{path}: {name}/betas {shape}, {name}/nsd_ids ({n},) and {name}/n_reps ({len(split.n_reps)},) "
            f"disagree: {FIX}"
        )
    if len(np.unique(split.nsd_ids)) != n:
        raise BrainattError(f"{path}: {name}/nsd_ids repeats an image: {FIX}")


def _finite(path: Path, name: str, betas: np.ndarray) -> None:
    bad = ~np.isfinite(betas)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise BrainattError(
            f"{path}: {name} holds {int(bad.sum())} NaN or infinite values (first at image row {row}, voxel {col}): "
            f"{FIX}, and check the betas it was made from"
        )


def read_responses(path: str | Path, betas: bool = True) -> Responses:
    """Read and validate a ``responses.h5`` (without the repeat-averaged betas when ``betas`` is False).

    Any inconsistency (a missing part, shapes that disagree, repeated images, NaN or infinite betas, a test image
    that is also a training image) is a `BrainattError` naming the file and the fix.
    """
    path = Path(path)
    with _open(path) as f:
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise BrainattError(f"{path}: no '{missing[0]}': the file is not a brainatt responses.h5; {FIX}")
        splits = {}
        for name in SPLITS:
            split = Split(f[f"{name}/nsd_ids"][()].astype(np.int64), f[f"{name}/n_reps"][()].astype(np.int64))
            _check_split(path, name, split, f[f"{name}/betas"].shape)
            if betas:
                split.betas = f[f"{name}/betas"][()].astype(np.float32)
                _finite(path, f"{name}/betas", split.betas)
            splits[name] = split
        both = np.intersect1d(splits["train"].nsd_ids, splits["test"].nsd_ids)
        if len(both):
            raise BrainattError(f"{path}: nsd id {both[0]} is in both the train and test splits: {FIX}")
        voxels = _read_voxels(path, f["voxels"])
        for name in SPLITS:
            n_vox = f[f"{name}/betas"].shape[1]
            if n_vox != voxels.n:
                raise BrainattError(f"{path}: {name}/betas has {n_vox} voxels, voxels/hemi {voxels.n}: {FIX}")
        return Responses(
            path=path,
            subject=str(f.attrs.get("subject", path.parent.name)),
            train=splits["train"],
            test=splits["test"],
            voxels=voxels,
            trial_session=f["trials/session"][()].astype(np.int64),
            config=json.loads(f.attrs.get("config", "{}")),
            warnings={str(k): int(v) for k, v in json.loads(f.attrs.get("warnings", "{}")).items()},
        )


def _read_voxels(path: Path, g: h5py.Group) -> Voxels:
    n = len(g["hemi"])

    def column(key: str, dtype: type | None = None) -> np.ndarray | None:
        if key not in g:
            return None
        value = g[key][()]
        if len(value) != n:
            raise BrainattError(f"{path}: voxels/{key} has {len(value)} rows for {n} voxels: {FIX}")
        return value.astype(dtype) if dtype else value

    rois, names = {}, {}
    for atlas in g.get("roi", {}):
        rois[atlas] = column(f"roi/{atlas}")
        names[atlas] = {}
        for item in g[f"roi_names/{atlas}"][()]:
            code, _, name = item.decode().partition(":")
            names[atlas][int(code)] = name
    hemi = g["hemi"][()].astype(str)
    if not np.isin(hemi, ("lh", "rh")).all():
        raise BrainattError(f"{path}: voxels/hemi holds values other than 'lh' and 'rh': {FIX}")
    shape = g["mask_shape"][()] if "mask_shape" in g else None
    return Voxels(
        hemi=hemi,
        rois=rois,
        roi_names=names,
        ncsnr=column("ncsnr", np.float32),
        nc_test=column("nc_test", np.float64),
        ijk=column("ijk", np.int64),
        affine=g["affine"][()].astype(np.float64) if "affine" in g else None,
        mask_shape=tuple(int(x) for x in shape) if shape is not None else None,
        vertex=column("vertex", np.int64),
        ncsnr_estimated=column("ncsnr_estimated", np.float32),
        sources={k: str(g[k].attrs["source"]) for k in ("ncsnr", "nc_test") if "source" in g[k].attrs},
    )


def read_trials(path: str | Path) -> Trials:
    """The single trials of a ``responses.h5`` (0 rows for datasets without them)."""
    path = Path(path)
    with _open(path) as f:
        for key in ("trials/betas", "trials/nsd_ids", "trials/session"):
            if key not in f:
                raise BrainattError(f"{path}: no '{key}': the file is not a brainatt responses.h5; {FIX}")
        trials = Trials(f["trials/betas"][()], f["trials/nsd_ids"][()], f["trials/session"][()])
    if not len(trials.betas) == len(trials.nsd_ids) == len(trials.session):
        raise BrainattError(f"{path}: trials/betas, trials/nsd_ids and trials/session differ in length: {FIX}")
    return trials
