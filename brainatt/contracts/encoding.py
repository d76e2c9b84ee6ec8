"""``results/encoding/{subject}/{encoder}/``: one fitted encoder and what it predicts.

- ``model.json`` + ``model.safetensors``: the fitted encoder (`brainatt.encoding.encoders`); ``model.json`` holds
  ``format`` (`MODEL_FORMAT`), ``encoder``, ``encoding`` (its config section), ``n_voxels``, ``grid``, ``layers``,
  ``backbone`` (``name`` as configured, ``spec``: the `ModelSpec` with kit names resolved to a directory,
  ``fingerprint``: `models.loading.weights_fingerprint`) and the encoder's own fields; the safetensors its arrays.
- ``test_pred.h5``: ``nsd_ids (N,)`` of the test images and ``pred (N, V) float32``, predicted responses in z units.
- ``voxel_scores.tsv``: one row per voxel, `SCORE_COLUMNS`.
- ``attention.h5`` (transformer): ``queries (Q,)``, ``voxel_query (V,)``, ``nsd_ids (N,)``, ``maps`` and
  ``maps_head_mean`` ``(Q, N, gh, gw) float16``, ``head_importance (members, N, heads, Q)``, attr ``grid``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from brainatt.io import BrainattError, atomic_h5

MODEL_INFO, MODEL_WEIGHTS = "model.json", "model.safetensors"
TEST_PRED, VOXEL_SCORES, ATTENTION = "test_pred.h5", "voxel_scores.tsv", "attention.h5"
MODEL_FORMAT = 2
SCORE_COLUMNS = ("voxel", "roi", "hemi", "family", "r", "r2", "nc", "nc_norm", "r_truth")
FIX = "rerun the encode rule for this subject and encoder"
ATTENTION_FIX = "not a brainatt attention.h5; rerun the transformer encoder"


# ------------------------------------------------------------------------------------------------------ model


def write_model(folder: str | Path, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """``model.json`` (``info``, ``format`` added) and ``model.safetensors`` (``arrays``) into ``folder``, which the
    caller writes atomically."""
    folder = Path(folder)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, folder / MODEL_WEIGHTS)
    (folder / MODEL_INFO).write_text(json.dumps({"format": MODEL_FORMAT, **info}, indent=1))


def read_model_info(folder: str | Path) -> dict[str, Any]:
    """A fitted encoder's ``model.json``, checked to be a self-contained model of this format."""
    folder = Path(folder)
    path = folder / MODEL_INFO
    if not path.exists() or not (folder / MODEL_WEIGHTS).exists():
        raise BrainattError(f"{folder}: no fitted encoder here ({MODEL_INFO}, {MODEL_WEIGHTS}): run the encode rule")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BrainattError(f"{path}: not valid JSON ({e}): {FIX}") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise BrainattError(f"{path}: written by an older brainatt (no self-contained model): {FIX}")
    missing = [k for k in ("encoder", "encoding", "n_voxels", "grid", "backbone") if k not in info]
    if missing:
        raise BrainattError(f"{path}: no '{missing[0]}': {FIX}")
    return info


def read_model(folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A fitted encoder's ``model.json`` (`read_model_info`) and its arrays from ``model.safetensors``."""
    info = read_model_info(folder)
    path = Path(folder) / MODEL_WEIGHTS
    try:
        arrays = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a damaged header or body
        raise BrainattError(f"{path}: cannot be read ({type(e).__name__}: {e}): {FIX}") from None
    return info, arrays


# -------------------------------------------------------------------------------------------- test predictions


@dataclass(frozen=True)
class PredictedResponses:
    """``test_pred.h5``: the test images' nsd ids ``(N,)`` and the predicted responses ``(N, V)`` in z units."""

    nsd_ids: np.ndarray
    pred: np.ndarray


def write_test_predictions(path: str | Path, nsd_ids: np.ndarray, pred: np.ndarray, config: dict[str, Any]) -> None:
    """Write ``test_pred.h5`` atomically."""
    with atomic_h5(path, config, "predicted responses (z units)") as f:
        f["nsd_ids"] = np.asarray(nsd_ids, np.int64)
        f["pred"] = np.asarray(pred, np.float32)


def read_test_predictions(path: str | Path) -> PredictedResponses:
    """``test_pred.h5``, checked: both datasets, one row per image, finite values."""
    path = Path(path)
    with _open(path) as f:
        for key in ("nsd_ids", "pred"):
            if key not in f:
                raise BrainattError(f"{path}: no '{key}': not a brainatt test_pred.h5; {FIX}")
        ids, pred = f["nsd_ids"][()], f["pred"][()]
    if pred.ndim != 2 or len(pred) != len(ids):
        raise BrainattError(f"{path}: pred has shape {pred.shape} for {len(ids)} images: {FIX}")
    if not np.isfinite(pred).all():
        raise BrainattError(f"{path}: predictions hold NaN or infinite values: {FIX}")
    return PredictedResponses(nsd_ids=ids, pred=pred)


# ------------------------------------------------------------------------------------------------ voxel scores


def write_voxel_scores(path: str | Path, scores: pd.DataFrame) -> None:
    """Write ``voxel_scores.tsv`` (the caller writes the folder atomically)."""
    missing = [c for c in SCORE_COLUMNS if c not in scores]
    if missing:
        raise ValueError(f"voxel scores lack columns {missing}")
    scores.to_csv(path, sep="\t", index=False, float_format="%.5g")


def read_voxel_scores(path: str | Path) -> pd.DataFrame:
    """``voxel_scores.tsv``, checked: every column of `SCORE_COLUMNS`, each voxel 0 … V−1 once (rows in any
    order)."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: voxel scores not found: {FIX}")
    try:
        scores = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BrainattError(f"{path}: not a readable table ({type(e).__name__}): {FIX}") from None
    missing = [c for c in SCORE_COLUMNS if c not in scores]
    if missing:
        raise BrainattError(f"{path}: no column '{missing[0]}': not a brainatt voxel_scores.tsv; {FIX}")
    if not np.array_equal(np.sort(scores["voxel"].to_numpy()), np.arange(len(scores))):
        raise BrainattError(f"{path}: the voxel column does not list voxels 0 … {len(scores) - 1} once each: {FIX}")
    return scores


# -------------------------------------------------------------------------------------------------- attention


def write_attention(
    path: str | Path,
    config: dict[str, Any],
    queries: list[str],
    voxel_query: np.ndarray,
    nsd_ids: np.ndarray,
    maps: np.ndarray,
    maps_head_mean: np.ndarray,
    head_importance: np.ndarray,
    grid: tuple[int, int],
) -> None:
    """Write ``attention.h5`` atomically: test-image maps per query, both head weightings, and the query each voxel
    reads."""
    with atomic_h5(path, config, "cross-attention weights of the last layer (sum to 1 per map)") as f:
        f["queries"] = np.array(queries, dtype="S")
        f["voxel_query"] = voxel_query
        f["voxel_query"].attrs["description"] = "(voxel,): the query each voxel reads (row of maps)"
        f["nsd_ids"] = nsd_ids
        f["maps"] = maps.astype(np.float16)
        f["maps"].attrs["description"] = "(query, image, gh, gw): each image's heads weighted by head_importance"
        f["maps_head_mean"] = maps_head_mean.astype(np.float16)
        f["maps_head_mean"].attrs["description"] = "(query, image, gh, gw): plain mean over heads (the reference's)"
        f["head_importance"] = head_importance.astype(np.float16)
        f["head_importance"].attrs["description"] = "(member, image, head, query): mean-ablation share per image"
        f.attrs["grid"] = list(grid)


@contextlib.contextmanager
def open_attention(path: str | Path) -> Iterator[h5py.File]:
    """``attention.h5`` open for reading, checked (``queries``, ``nsd_ids``, ``maps`` of shape ``(Q, N, gh, gw)``
    matching them and the ``grid`` attribute); datasets are read lazily, the maps can be large."""
    path = Path(path)
    with _open(path) as f:
        for key in ("queries", "nsd_ids", "maps"):
            if key not in f:
                raise BrainattError(f"{path}: no '{key}': {ATTENTION_FIX}")
        if "grid" not in f.attrs:
            raise BrainattError(f"{path}: no 'grid' attribute: {ATTENTION_FIX}")
        expected = (len(f["queries"]), len(f["nsd_ids"]), *(int(g) for g in f.attrs["grid"]))
        for key in ("maps", "maps_head_mean"):
            if key in f and f[key].shape != expected:
                raise BrainattError(
                    f"{path}: {key} has shape {f[key].shape}, not (queries, images, gh, gw) = {expected}: "
                    f"{ATTENTION_FIX}"
                )
        yield f


@contextlib.contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    if not path.exists():
        raise BrainattError(f"{path}: not found: {FIX}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BrainattError(f"{path}: not a readable HDF5 file ({e}): it is truncated; {FIX}") from None
    with f:
        yield f
