"""``results/features/{role}/{model}.h5``: one pass of a frozen model over the stimuli, read by every encoder.

``{model}`` is the role's name with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``-``.
Layout: ``nsd_ids (N,)`` (the stimuli's), ``pooled (N, D) float32``, ``tokens/<layer> (N, gh, gw, C) float16``
(one image per chunk; none for the ``clip`` role, whose ``layers`` and ``grid`` are empty); attrs ``role``,
``backbone`` (the spec's name as configured), ``layers``, ``grid``, ``model_spec`` (the whole `ModelSpec` as
JSON, ``kit:`` names resolved to their directory), ``model_fingerprint`` (`models.loading.weights_fingerprint`
of the module that ran) and the stamp every output carries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt.io import BrainattError, atomic_h5, open_h5, read_by_nsd_id
from brainatt.models.spec import ModelSpec, resolved_spec

UNITS = "tokens: backbone activations"
FIX = "rerun the features rule"


class FeaturesWriter:
    """Fills a feature file opened by `features_writer`, a batch of rows at a time."""

    def __init__(self, f: h5py.File, n: int) -> None:
        self.f, self.n = f, n

    def write(self, start: int, features: dict[str | int, np.ndarray]) -> None:
        """Rows ``start …`` of every output: ``"pooled"`` ``(B, D)`` and each layer's ``(B, gh, gw, C)`` tokens."""
        for key, value in features.items():
            name = "pooled" if key == "pooled" else f"tokens/{key}"
            if name not in self.f:
                dtype, chunks = (np.float32, None) if key == "pooled" else (np.float16, (1, *value.shape[1:]))
                self.f.create_dataset(name, (self.n, *value.shape[1:]), dtype=dtype, chunks=chunks)
            self.f[name][start : start + len(value)] = value


@contextlib.contextmanager
def features_writer(
    path: str | Path,
    config: dict[str, Any],
    nsd_ids: np.ndarray,
    spec: ModelSpec,
    grid: tuple[int, int] | None,
    fingerprint: str,
    kit_dir: str | Path | None = None,
) -> Iterator[FeaturesWriter]:
    """Write a feature file atomically for the model ``spec`` names as configured (``kit_dir``: where its ``kit:``
    name resolves); ``fingerprint`` is the loaded module's; ``grid`` None: pooled embeddings only, no layers."""
    with atomic_h5(path, config, UNITS) as f:
        f["nsd_ids"] = np.asarray(nsd_ids, np.int64)
        f.attrs["backbone"] = spec.name
        f.attrs["role"] = spec.role
        f.attrs["layers"] = list(spec.layers) if grid else []
        f.attrs["grid"] = list(grid or ())
        f.attrs["model_spec"] = resolved_spec(spec, kit_dir).to_json()
        f.attrs["model_fingerprint"] = fingerprint
        writer = FeaturesWriter(f, len(nsd_ids))
        yield writer
        if "pooled" not in f:
            raise ValueError("feature file left without pooled embeddings")


class FeatureCache:
    """Read access to a feature file, validated on opening: tokens and pooled embeddings of given nsd ids."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open_h5(self.path, "feature cache", FIX) as f:
            attrs = ("layers", "grid", "backbone", "model_spec", "model_fingerprint")
            missing = [a for a in attrs if a not in f.attrs] + [d for d in ("nsd_ids", "pooled") if d not in f]
            if missing:
                raise BrainattError(f"{self.path}: no '{missing[0]}': not a brainatt feature file; {FIX}")
            self.layers = [int(v) for v in f.attrs["layers"]]
            self.grid = tuple(int(v) for v in f.attrs["grid"])
            self.backbone = str(f.attrs["backbone"])
            self.spec = ModelSpec.from_json(f.attrs["model_spec"])
            self.fingerprint = str(f.attrs["model_fingerprint"])
            self.nsd_ids = f["nsd_ids"][()].astype(np.int64)
            n = len(self.nsd_ids)
            if len(np.unique(self.nsd_ids)) != n:
                raise BrainattError(f"{self.path}: nsd_ids lists an image twice: {FIX}")
            names = ["pooled", *(f"tokens/{layer}" for layer in self.layers)]
            for name in names:
                if name not in f:
                    raise BrainattError(f"{self.path}: layer {name} is listed but not stored: {FIX}")
                shape = f[name].shape
                if shape[0] != n or (name != "pooled" and tuple(shape[1:3]) != self.grid):
                    raise BrainattError(
                        f"{self.path}: {name} has shape {shape} for {n} images on a {self.grid} grid: {FIX}"
                    )

    def _read(self, name: str, nsd_ids: np.ndarray) -> np.ndarray:
        fix = "rerun the stimuli and features rules for these subjects"
        rows = read_by_nsd_id(self.path, name, nsd_ids, "the feature cache", fix)
        bad = ~np.isfinite(rows).reshape(len(rows), -1).all(1)
        if bad.any():
            raise BrainattError(
                f"{self.path}: {name} holds NaN or infinite values for {int(bad.sum())} images (e.g. nsd id "
                f"{int(np.asarray(nsd_ids)[bad][0])}): the model overflowed or the file is damaged; {FIX}"
            )
        return rows

    def tokens(self, layer: int, nsd_ids: np.ndarray) -> np.ndarray:
        """``(N, gh, gw, C) float16`` patch tokens of one cached layer."""
        if layer not in self.layers:
            raise BrainattError(f"{self.path}: layer {layer} not cached (cached: {self.layers}): {FIX}")
        return self._read(f"tokens/{layer}", nsd_ids)

    def pooled(self, nsd_ids: np.ndarray) -> np.ndarray:
        """``(N, D) float32`` pooled embeddings."""
        return self._read("pooled", nsd_ids)
