"""``results/stimuli/images.h5``: the images every subject saw, once each, and their captions.

Layout: ``nsd_ids (N,) int64`` (sorted, unique), ``images (N, H, W, 3) uint8`` (one image per chunk, gzip), optionally
``captions (N, K)`` strings (an image's captions, padded with ""), and the stamp every output carries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt.io import BrainattError, atomic_h5, open_h5, read_by_nsd_id

UNITS = "images: uint8 RGB"
# Lossless, per image: 1.44x smaller on photographs at 424 px (540 -> 375 kB), ~32x on nsd-synth's flat-coloured
# scenes; gzip level 1 writes within 10% of level 9's size at a third of its time (bench/RESULTS.md, nsd_scale).
COMPRESSION = {"compression": "gzip", "compression_opts": 1}
FIX = "rerun the stimuli rule"


@dataclass
class StimuliWriter:
    """Fills an ``images.h5`` opened by `stimuli_writer`: ``images`` is the dataset to write, row i = ``nsd_ids[i]``."""

    f: h5py.File
    images: h5py.Dataset

    def captions(self, per_image: Sequence[Sequence[str]]) -> None:
        """Each image's captions (any number, in the order of ``nsd_ids``)."""
        width = max(1, *(len(c) for c in per_image)) if len(per_image) else 1
        table = np.array([list(c) + [""] * (width - len(c)) for c in per_image], dtype=object).reshape(-1, width)
        self.f.create_dataset("captions", data=table, dtype=h5py.string_dtype())


@contextlib.contextmanager
def stimuli_writer(
    path: str | Path, config: dict[str, Any], nsd_ids: np.ndarray, image_shape: tuple[int, int, int]
) -> Iterator[StimuliWriter]:
    """Write ``images.h5`` atomically for ``nsd_ids`` (sorted, unique) of images of ``image_shape`` (H, W, 3)."""
    nsd_ids = np.asarray(nsd_ids, np.int64)
    if len(np.unique(nsd_ids)) != len(nsd_ids) or (np.diff(nsd_ids) < 0).any():
        raise ValueError("stimuli nsd_ids must be sorted and unique")
    with atomic_h5(path, config, UNITS) as f:
        f["nsd_ids"] = nsd_ids
        images = f.create_dataset(
            "images", (len(nsd_ids), *image_shape), np.uint8, chunks=(1, *image_shape), **COMPRESSION
        )
        yield StimuliWriter(f, images)


class Stimuli:
    """Read access to ``images.h5``, validated on opening: images and captions by nsd id, in the order asked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open_h5(self.path, "stimulus file", FIX) as f:
            if "images" not in f or "nsd_ids" not in f:
                raise BrainattError(f"{self.path}: no 'images'/'nsd_ids' datasets: not a brainatt images.h5; {FIX}")
            images = f["images"]
            self.nsd_ids = f["nsd_ids"][()].astype(np.int64)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise BrainattError(
                    f"{self.path}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}: {FIX}"
                )
            if len(images) != len(self.nsd_ids) or (np.diff(self.nsd_ids) <= 0).any():
                raise BrainattError(f"{self.path}: nsd_ids are not one sorted, unique id per image: {FIX}")
            self.image_shape: tuple[int, int, int] = tuple(images.shape[1:])
            self.has_captions = "captions" in f

    def __len__(self) -> int:
        return len(self.nsd_ids)

    def images(self, nsd_ids: np.ndarray) -> np.ndarray:
        """``(n, H, W, 3) uint8`` images of ``nsd_ids``."""
        return read_by_nsd_id(self.path, "images", nsd_ids, "the stimuli file", FIX)

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every image in file order, ``size`` at a time: ``(nsd_ids, images)``."""
        with open_h5(self.path, "stimulus file", FIX) as f:
            for i in range(0, len(self), size):
                yield self.nsd_ids[i : i + size], f["images"][i : i + size]

    def captions(self, nsd_ids: np.ndarray) -> list[list[str]]:
        """Each image's non-empty captions; a `BrainattError` when the dataset has none."""
        if not self.has_captions:
            raise BrainattError(f"{self.path}: no captions: the dataset has none (NSD: add the COCO annotations)")
        table = read_by_nsd_id(self.path, "captions", nsd_ids, "the stimuli file", FIX)
        return [[c.decode() if isinstance(c, bytes) else str(c) for c in row if c] for row in table]
