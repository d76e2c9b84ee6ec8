"""``results/scuba/candidates/candidates.h5``: raw CLIP image embeddings of BrainSCUBA's candidate images.

Layout: ``embeddings (N, D) float32`` (raw, norms kept: the captioner takes raw embeddings), chunked by rows so it
streams; ``names (N,)`` strings naming each candidate's image (a file path inside the folder, or the row of the
images file it came from); attrs ``source`` (``synth``, ``folder``, ``images`` or ``embeddings``), ``source_path``,
``model_spec`` (JSON, empty for a precomputed file), ``rejected`` (JSON: images that failed to load, embeddings
that were zero or not finite) and the stamp every output carries. Every stored row is finite and non-zero: the
writer drops the others and counts them.

The user's own inputs are read here too (no other stage opens HDF5): an HDF5 of images (`image_file_batches`)
and a precomputed embedding file (`embedding_file_batches`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt.io import BrainattError, atomic_h5, open_h5

log = logging.getLogger(__name__)
UNITS = "embeddings: raw CLIP image embeddings"
FIX = "rerun the scuba_candidate_embeddings rule"
ROWS_PER_CHUNK = 4096


def good_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows that are finite and non-zero (a zero or NaN embedding is a failed image, never a candidate)."""
    e = np.asarray(embeddings)
    return np.isfinite(e).all(1) & (np.abs(e).max(1, initial=0) > 0)


class CandidatesWriter:
    """Appends embeddings to a file opened by `candidates_writer`, dropping (and counting) bad rows."""

    def __init__(self, f: h5py.File, dim: int) -> None:
        self.f = f
        self.data = f.create_dataset(
            "embeddings", (0, dim), np.float32, maxshape=(None, dim), chunks=(ROWS_PER_CHUNK, dim)
        )
        self.names: list[str] = []
        self.rejected = {"unreadable": 0, "zero_or_nonfinite": 0}

    def add(self, embeddings: np.ndarray, names: Sequence[str]) -> None:
        """Append ``(B, D)`` raw embeddings of the images ``names``; zero or non-finite rows are dropped."""
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2 or e.shape[1] != self.data.shape[1] or len(e) != len(names):
            raise ValueError(f"candidate batch {e.shape} for {len(names)} names, dimension {self.data.shape[1]}")
        keep = good_rows(e)
        self.rejected["zero_or_nonfinite"] += int((~keep).sum())
        n = len(self.data)
        self.data.resize(n + int(keep.sum()), 0)
        self.data[n:] = e[keep]
        self.names += [str(s) for s, k in zip(names, keep, strict=True) if k]

    def unreadable(self, count: int) -> None:
        """Count images that could not be read (they have no embedding)."""
        self.rejected["unreadable"] += count


@contextlib.contextmanager
def candidates_writer(
    path: str | Path, config: dict[str, Any], dim: int, source: str, source_path: str | Path, model_spec: str = ""
) -> Iterator[CandidatesWriter]:
    """Write a candidate file atomically; it is refused (nothing written) when no candidate survives."""
    with atomic_h5(path, config, UNITS) as f:
        f.attrs["source"] = source
        f.attrs["source_path"] = str(source_path)
        f.attrs["model_spec"] = model_spec
        w = CandidatesWriter(f, dim)
        yield w
        f["names"] = np.array(w.names, dtype=object).astype(h5py.string_dtype())
        f.attrs["rejected"] = json.dumps(w.rejected)
        level = logging.WARNING if any(w.rejected.values()) else logging.INFO
        log.log(
            level, "%d candidate embeddings kept; rejected: %d unreadable images, %d zero or non-finite embeddings",
            len(w.names), w.rejected["unreadable"], w.rejected["zero_or_nonfinite"],
        )  # fmt: skip
        if not w.names:
            raise BrainattError(f"{source_path}: no usable candidate image ({w.rejected}): check the source")


class Candidates:
    """Read access to a candidate file, validated on opening; embeddings stream in row chunks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BrainattError(f"{self.path}: candidate file missing: {FIX}")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise BrainattError(f"{self.path}: not a readable HDF5 file ({e}): it is truncated; {FIX}") from None
        with f:
            missing = [a for a in ("source", "rejected") if a not in f.attrs]
            missing += [d for d in ("embeddings", "names") if d not in f]
            if missing:
                raise BrainattError(f"{self.path}: no '{missing[0]}': not a brainatt candidate file; {FIX}")
            data = f["embeddings"]
            if data.ndim != 2 or data.dtype != np.float32 or len(f["names"]) != len(data) or not len(data):
                raise BrainattError(
                    f"{self.path}: embeddings {data.dtype} {data.shape} for {len(f['names'])} names: {FIX}"
                )
            self.n, self.dim = data.shape
            self.source = str(f.attrs["source"])
            self.model_spec = str(f.attrs.get("model_spec", ""))
            self.rejected: dict[str, int] = json.loads(f.attrs["rejected"])

    def __len__(self) -> int:
        return self.n

    def names(self) -> list[str]:
        with h5py.File(self.path, "r") as f:
            return [s.decode() for s in f["names"][()]]

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, raw embeddings (≤ size, D) float32)`` in file order; never the whole matrix at once."""
        with h5py.File(self.path, "r") as f:
            data = f["embeddings"]
            for start in range(0, self.n, size):
                e = data[start : start + size]
                if not good_rows(e).all():
                    raise BrainattError(f"{self.path}: rows {start}… hold zero or non-finite embeddings: {FIX}")
                yield start, e


@contextlib.contextmanager
def _open_user_file(path: str | Path, dataset: str, what: str) -> Iterator[h5py.File]:
    with open_h5(path, what, "fix scuba.candidates.path") as f:
        if dataset not in f:
            raise BrainattError(f"{path}: no dataset '{dataset}' (has {sorted(f)}): set scuba.candidates.dataset")
        yield f


def image_file_batches(path: str | Path, dataset: str, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images (≤ size, H, W, 3) uint8)`` of an HDF5 of images (e.g. a project images.h5)."""
    with _open_user_file(path, dataset, "candidate image file") as f:
        data = f[dataset]
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
            raise BrainattError(
                f"{path}: '{dataset}' must be uint8 (N, H, W, 3) images, got {data.dtype} {data.shape}: "
                "convert the images or name another dataset (scuba.candidates.dataset)"
            )
        for start in range(0, len(data), size):
            yield start, data[start : start + size]


def embedding_file_batches(path: str | Path, dataset: str, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, embeddings (≤ size, D) float32)`` of a precomputed embedding file (raw CLIP embeddings, N × D)."""
    with _open_user_file(path, dataset, "candidate embedding file") as f:
        data = f[dataset]
        if data.ndim != 2 or data.dtype.kind != "f":
            raise BrainattError(
                f"{path}: '{dataset}' must be a float (N, D) matrix of raw CLIP embeddings, got {data.dtype} "
                f"{data.shape}: name the embedding dataset (scuba.candidates.dataset)"
            )
        for start in range(0, len(data), size):
            yield start, data[start : start + size].astype(np.float32)
